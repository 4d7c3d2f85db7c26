"""Deployment: the Kubernetes manifests (``deploy/k8s``), the image's install script
(``deploy/image``) and the Python that renders, validates and reads them (``./dev k8s``, lab)."""
