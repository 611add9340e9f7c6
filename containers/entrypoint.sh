#!/bin/sh
# The image's three long-running roles, chosen by the first argument:
#   code-server   the gRPC code location (port 4000), image named to runs via DAGSTER_CURRENT_IMAGE
#   webserver     the UI (port 3000), loading the code server through deploy/workspace.yaml
#   daemon        schedules, the run queue and run monitoring, through deploy/workspace.yaml
# Anything else is run as given (e.g. `dagster api execute_run ...`, `bash`).
set -eu

cd "${APP_DIR:-/opt/engagement-dagster}"

role="${1:-code-server}"
if [ "$#" -gt 0 ]; then
    shift
fi

need_code_server() {
    : "${DAGSTER_CODE_SERVER_HOST:?host of the code server, e.g. code-server.<service-discovery namespace>}"
    : "${DAGSTER_CODE_SERVER_PORT:?port of the code server (4000)}"
    : "${DAGSTER_CODE_LOCATION_NAME:?name of the code location (engagement_dagster)}"
}

case "$role" in
    code-server)
        : "${DAGSTER_CURRENT_IMAGE:?the image runs are launched in (the URI of this image)}"
        exec dagster code-server start -h 0.0.0.0 -p "${DAGSTER_CODE_SERVER_PORT:-4000}" \
            -m engagement_dagster.definitions \
            --location-name "${DAGSTER_CODE_LOCATION_NAME:-engagement_dagster}" "$@"
        ;;
    webserver)
        need_code_server
        exec dagster-webserver -h 0.0.0.0 -p "${DAGSTER_WEBSERVER_PORT:-3000}" -w deploy/workspace.yaml "$@"
        ;;
    daemon)
        need_code_server
        exec dagster-daemon run -w deploy/workspace.yaml "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
