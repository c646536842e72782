# peer agent image: a wheel built in one stage, installed into a slim runtime with
# no compiler, no build tools and no source tree, run as an unprivileged user.
#
#   docker build -t peer .
#   docker run --rm --entrypoint peer peer keygen > cluster.key     # a cluster key (or an API token)
#   docker run -d --name peer-a \
#       -v "$PWD/cluster.key:/run/secrets/cluster_key:ro" -v "$PWD/api.token:/run/secrets/api_token:ro" \
#       -e PEER_KEY_FILE=/run/secrets/cluster_key -e PEER_API_TOKEN_FILE=/run/secrets/api_token \
#       peer --seeds dns:peers.internal
#
# Settings come from PEER_* variables, from flags after the image name (they win),
# or from a TOML file given as PEER_CONFIG / --config: README.md, "The agent".
# README.md, "Deploying: Docker, Compose, Kubernetes", explains every choice made here.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY membership ./membership
COPY crdt ./crdt
COPY peer ./peer
COPY sim ./sim
# The peer wheel and a wheel of every dependency (all have binary wheels for
# manylinux: nothing is compiled), so the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
# tini as PID 1: it forwards SIGTERM to the agent (and only to it: the agent's
# running command jobs must finish their drain, not die with it) and reaps the
# orphans a `command` job may leave. A Python process as PID 1 would reap nothing.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# The wheels are mounted for this one step, never copied into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels peer
# A fixed numeric UID, so Kubernetes' runAsNonRoot can check it and a secret
# file can be given to it (fsGroup, or chown 10001 on the host).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin peer \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/peer
# /var/lib/peer: a directory the agent's jobs may write to. A named volume mounted
# there starts with its owner (Docker copies the directory into a new volume).

# Container defaults. Gossip on every interface, the advertised address being the
# container's own (a wildcard bind advertises the outward address). The API too,
# for probes and for clients in other containers: beyond loopback the agent
# refuses to start without an API token (PEER_API_TOKEN_FILE or PEER_API_TOKEN).
# Logs as JSON lines on stdout. Seeds are resolved again every 5 s (not 30): a
# replica that started before its siblings were in DNS finds them soon.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PEER_BIND=0.0.0.0:7946 \
    PEER_API=0.0.0.0:7947 \
    PEER_LOG_FORMAT=json \
    PEER_DNS_INTERVAL=5

USER 10001:10001
WORKDIR /var/lib/peer
# Gossip: UDP datagrams and TCP streams on one port. The control API: TCP.
EXPOSE 7946/udp 7946/tcp 7947/tcp

# SIGTERM makes the agent leave gracefully: it hands its leases over, lets its
# running runs finish for up to PEER_DRAIN_TIMEOUT seconds (30 by default), hands
# back what still runs, and exits 0 within about 5 s more. Give the container more
# than drain_timeout + 10 s before the SIGKILL (`docker stop -t 45` with the default), compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM

# Ready: joined, caught up with the cluster, not leaving (503 otherwise). No curl
# in the image: Python asks, on the port of PEER_API (an API served over TLS, or
# configured in a TOML file only, needs this line changed).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('PEER_API', ':7947').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health/ready', timeout=4)"]

ENTRYPOINT ["tini", "--", "peer", "agent"]
