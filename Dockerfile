# One image for every role (signaling, relay, transceiver, Celery worker and beat, Jobs); the
# manifests in deploy/k8s choose the command. Its install steps are deploy/image/install.sh,
# which CI also runs in a fresh directory (.ci/run).
#   docker build -t registry.example.com/voice-edge:1.0.0 .
FROM python:3.11-slim AS build
# a compiler for the relay's C fast path, in this stage only
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN /src/deploy/image/install.sh /src /opt/venv /app

FROM python:3.11-slim
# no compilers or build tools here: the build stage's venv and app are copied as they are
RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edge
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8000/tcp 3478/udp 4478/udp 5001/udp 9100/tcp 9101/tcp
CMD ["python", "-m", "signaling_site.http_server", "-b", "0.0.0.0", "-p", "8000", "signaling_site.asgi:application"]
