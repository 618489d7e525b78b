# valve in a container: valvectl is PID 1 (exec form), serving the plumber API in /srv/app.
#
#   docker build -t valve .
#   docker run --rm -p 8000:8000 valve                                 # examples/hello
#   docker run --rm -p 8000:8000 -v "$PWD/examples/model:/srv/app:ro" valve -n 4
#
# Each RUN is a step of scripts/container, which tests/integration/test_container.py runs on the
# test machine: the same packages, build, install and command line, without a Docker engine.
# scripts/container-image builds and runs it for real with podman, from a debootstrap-made base
# where no registry is reachable (docs/deployment.md); test_container_image.py does so in the suite.

FROM debian:bookworm-slim AS build
COPY . /src
RUN /src/scripts/container install-packages build
RUN /src/scripts/container build /src /tmp/build /staging

FROM debian:bookworm-slim
COPY scripts/container /usr/local/share/valve/container
RUN /usr/local/share/valve/container install-packages runtime \
 && useradd --system --no-create-home --home-dir /srv/app valve
COPY --from=build /staging/ /
RUN ldconfig
COPY examples/hello /srv/app
WORKDIR /srv/app
USER valve
# Flags may be given after the image name; these are the defaults a flag overrides. The admin
# interface stays inside the container (docker exec CONTAINER valvectl status); Kubernetes
# moves it to 0.0.0.0:9000 for its probes (examples/kubernetes), with the admin token from a
# Secret (VALVECTL_ADMIN_TOKEN_FILE): beyond loopback valvectl refuses to serve it without one.
# Workers run 10 steps nicer than valvectl: alone in the container's cgroup, that only puts
# valvectl first when both want the CPU, so that under overload it still dispatches and sheds load.
ENV VALVECTL_HOST=0.0.0.0 \
    VALVECTL_PORT=8000 \
    VALVECTL_FILE=/srv/app/plumber.R \
    VALVECTL_ADMIN=127.0.0.1:9000 \
    VALVECTL_WORKER_NICE=10
EXPOSE 8000
# docker stop sends SIGTERM: valvectl drains for --graceful-timeout (30 s), so give it longer than
# Docker's default 10 s: docker stop -t 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/valvectl"]
CMD ["--n-max", "4"]
