#!/usr/bin/env bash
# docker/start.sh — what the twelve-in-one containers run (CMD of Dockerfile and Dockerfile.cpu).
#
# No Docker engine exists on the machines this project is developed on: the images have never been
# built there.  This script is tested there OUTSIDE Docker instead (tests/test_container.py runs it
# with Dockerfile.cpu's environment on a tiny model, up to an answered /vqa and a SIGTERM).
#
#   docker/start.sh [all]     export the model repository if missing or stale, start Triton through
#                             the project launcher (127.0.0.1 only), wait for every model, then the
#                             gateway (python -m server --backend triton) in front of it.  SIGTERM or
#                             SIGINT: the gateway drains first, then Triton stops; both are waited for.
#   docker/start.sh triton    export if needed, then Triton alone (compose.yaml's `triton` service)
#   docker/start.sh gateway   wait for Triton, then the gateway alone (compose.yaml's `gateway` service,
#                             which shares the triton service's network namespace: Triton stays loopback)
#   docker/start.sh export    export if needed, then exit
#   docker/start.sh health    exit 0 when Triton reports every model ready (compose healthcheck)
#
# Environment (defaults: the paths `make serve` writes, relative to the checkout; see bootstrap/layout.py).
# The TWELVE_* names the gateway reads itself (server/settings.py) are passed to it as flags too.
#   TWELVE_CHECKPOINT            checkpoint directory            runs/demo/model
#   TWELVE_DETECTOR_WEIGHTS      regions detector .safetensors    artifacts/detector/synthetic-detector.safetensors
#   TWELVE_MODEL_REPOSITORY      Triton model repository          model_repository
#   TWELVE_EXAMPLES_DIR          the web page's examples          artifacts/examples (used only if present)
#   TWELVE_CACHE_DIR             region-feature LMDB cache        artifacts/region-cache
#   TWELVE_DATA_DIR              persistent galleries             artifacts/galleries
#   TWELVE_EXPORT_BACKEND        python | onnxruntime | tensorrt  python (the nvidia-pytriton Triton's only one)
#   TWELVE_EXPORT_PRECISION      fp32 | int8 | fp16               fp32
#   TWELVE_EXPORT_DATA           synthetic world for the export's metric gate (unset: --skip-metric)
#   TWELVE_HOST, TWELVE_PORT     the gateway's address            127.0.0.1, 8000 (images: 0.0.0.0)
#   TWELVE_TRITON_HTTP_PORT      Triton HTTP (what the gateway's tritonclient.http speaks)   8010
#   TWELVE_TRITON_GRPC_PORT      Triton gRPC                                                  8011
#   TWELVE_TRITON_METRICS_PORT   Triton metrics                                               8012
#   TWELVE_TRITON_URL            gateway mode only: Triton's HTTP host:port (default 127.0.0.1:HTTP port);
#                                `all` always uses the Triton it started
#   TWELVE_TRITONSERVER          a system tritonserver binary (NGC image); empty: the nvidia-pytriton one
#   TWELVE_TRITON_BACKEND_DIRECTORY  its backends folder (default: beside the binary, ../backends)
#   TWELVE_TRITON_STARTUP_TIMEOUT    seconds for every model to become ready   300
#   TWELVE_TRITON_LOG_FILE       Triton's log (default: a temporary file)
#   TWELVE_BUILD_DEMO            1: build the demo model (python -m bootstrap --build-only, ~20 min on
#                                2 cores) when the checkpoint or detector is missing; 0: stop with a message
#   TWELVE_PYTHON                interpreter with the project installed   <checkout>/.venv/bin/python
# Other TWELVE_* settings (TWELVE_WORKERS, TWELVE_API_KEY, limits) reach the gateway unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE="${1:-all}"

PY="${TWELVE_PYTHON:-$ROOT/.venv/bin/python}"
: "${TWELVE_CHECKPOINT:=runs/demo/model}"
: "${TWELVE_DETECTOR_WEIGHTS:=artifacts/detector/synthetic-detector.safetensors}"
: "${TWELVE_MODEL_REPOSITORY:=model_repository}"
: "${TWELVE_EXAMPLES_DIR:=artifacts/examples}"
: "${TWELVE_CACHE_DIR:=artifacts/region-cache}"
: "${TWELVE_DATA_DIR:=artifacts/galleries}"
: "${TWELVE_EXPORT_BACKEND:=python}"
: "${TWELVE_EXPORT_PRECISION:=fp32}"
: "${TWELVE_EXPORT_DATA:=}"
: "${TWELVE_HOST:=127.0.0.1}"
: "${TWELVE_PORT:=8000}"
: "${TWELVE_TRITON_HTTP_PORT:=8010}"
: "${TWELVE_TRITON_GRPC_PORT:=8011}"
: "${TWELVE_TRITON_METRICS_PORT:=8012}"
: "${TWELVE_TRITONSERVER:=}"
: "${TWELVE_TRITON_BACKEND_DIRECTORY:=}"
: "${TWELVE_TRITON_STARTUP_TIMEOUT:=300}"
: "${TWELVE_TRITON_LOG_FILE:=}"
: "${TWELVE_BUILD_DEMO:=0}"

log() { printf 'start.sh: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 2
}

# --- child processes and shutdown -------------------------------------------------------------------
# Children run in the background and the script waits for them, so a SIGTERM is handled at once, even
# during a long export (bash runs a trap only between commands).
GATEWAY_PID=""
TRITON_PID=""
STEP_PID=""

stop_pid() { # stop_pid PID: SIGTERM, then wait for it (its exit status is returned)
	local pid="$1" status=0
	[[ -n "$pid" ]] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || status=$?
	return "$status"
}

stop_all() { # the gateway first (it drains in-flight requests), then Triton; sets both statuses
	GATEWAY_STATUS=0
	TRITON_STATUS=0
	stop_pid "$STEP_PID" || true
	stop_pid "$GATEWAY_PID" || GATEWAY_STATUS=$?
	stop_pid "$TRITON_PID" || TRITON_STATUS=$?
	STEP_PID="" GATEWAY_PID="" TRITON_PID=""
}

on_signal() {
	trap '' TERM INT
	log "stopping (gateway first: it drains in-flight requests; then Triton)"
	stop_all
	log "stopped (gateway status $GATEWAY_STATUS, Triton launcher status $TRITON_STATUS)"
	# uvicorn re-raises the SIGTERM it drained on: 143 is the gateway's clean exit.
	if [[ "$GATEWAY_STATUS" =~ ^(0|143)$ && "$TRITON_STATUS" == 0 ]]; then
		exit 0
	fi
	exit 1
}
trap on_signal TERM INT
trap stop_all EXIT # an error (die, a failed step) leaves no child behind

run_step() { # run_step CMD...: a foreground step that a SIGTERM can still interrupt
	"$@" &
	STEP_PID=$!
	local status=0
	wait "$STEP_PID" || status=$?
	STEP_PID=""
	return "$status"
}

# --- Triton readiness (bash's /dev/tcp: no curl in the slim image) ------------------------------------
triton_ready() { # every model ready: the launcher runs Triton with --strict-readiness=true
	local line=""
	{ exec 3<>"/dev/tcp/127.0.0.1/${TWELVE_TRITON_HTTP_PORT}"; } 2>/dev/null || return 1
	printf 'GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 || true
	IFS= read -r -t 5 line <&3 || true
	exec 3<&- 3>&-
	[[ "$line" =~ ^HTTP/1\.[01]\ 200 ]]
}

wait_for_triton() { # wait_for_triton [PID]: until ready; fails if PID (the launcher) exits first
	local pid="${1:-}"
	local deadline=$((SECONDS + TWELVE_TRITON_STARTUP_TIMEOUT + 30))
	until triton_ready; do
		if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
			local status=0
			wait "$pid" || status=$?
			TRITON_PID=""
			die "the Triton launcher exited with status $status before Triton was ready (its output is above)"
		fi
		((SECONDS < deadline)) || die "Triton on 127.0.0.1:${TWELVE_TRITON_HTTP_PORT} not ready after ${TWELVE_TRITON_STARTUP_TIMEOUT} s"
		sleep 0.5 &
		wait $! || true
	done
}

# --- the model repository ---------------------------------------------------------------------------
# Why the repository must be (re)written: "" when it is up to date.  Missing, exported from other
# weights or by other exporter code (export.repository.stale_reason), or another backend/precision.
repository_stale_reason() {
	"$PY" - "$TWELVE_MODEL_REPOSITORY" "$TWELVE_CHECKPOINT" "$TWELVE_EXPORT_BACKEND" \
		"$TWELVE_EXPORT_PRECISION" <<'EOF'
import sys
from pathlib import Path

from export.repository import read_manifest, stale_reason

repository, checkpoint, backend, precision = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
if not (repository / "active.json").is_file():
    print("there is none")
    raise SystemExit
reason = stale_reason(repository, checkpoint) if checkpoint.is_dir() else None
manifest = read_manifest(repository)
if reason is None and (manifest.get("backend"), manifest.get("precision")) != (backend, precision):
    reason = f"it is {manifest.get('backend')}/{manifest.get('precision')}, not {backend}/{precision}"
print(reason or "")
EOF
}

ensure_model() {
	if [[ ! -d "$TWELVE_CHECKPOINT" || ! -f "$TWELVE_DETECTOR_WEIGHTS" ]] && [[ "$TWELVE_BUILD_DEMO" == 1 ]]; then
		log "building the demo model (python -m bootstrap --build-only; about 20 minutes on 2 cores)"
		run_step "$PY" -m bootstrap --build-only
	fi
	[[ -f "$TWELVE_DETECTOR_WEIGHTS" ]] || die "no detector weights at $TWELVE_DETECTOR_WEIGHTS: mount \
what \`make serve\` built (artifacts/), set TWELVE_DETECTOR_WEIGHTS, or TWELVE_BUILD_DEMO=1"
	if [[ ! -d "$TWELVE_CHECKPOINT" ]]; then
		[[ -f "$TWELVE_MODEL_REPOSITORY/active.json" ]] || die "no checkpoint at $TWELVE_CHECKPOINT and \
no model repository at $TWELVE_MODEL_REPOSITORY: mount what \`make serve\` built (runs/), set \
TWELVE_CHECKPOINT, or TWELVE_BUILD_DEMO=1"
		log "no checkpoint at $TWELVE_CHECKPOINT: serving $TWELVE_MODEL_REPOSITORY as it is"
		return
	fi
	local reason
	reason="$(repository_stale_reason)"
	if [[ -z "$reason" ]]; then
		log "model repository $TWELVE_MODEL_REPOSITORY is up to date"
		return
	fi
	log "exporting $TWELVE_CHECKPOINT to $TWELVE_MODEL_REPOSITORY ($TWELVE_EXPORT_BACKEND, \
$TWELVE_EXPORT_PRECISION): $reason"
	local args=(--checkpoint "$TWELVE_CHECKPOINT" --out "$TWELVE_MODEL_REPOSITORY"
		--backend "$TWELVE_EXPORT_BACKEND" --precision "$TWELVE_EXPORT_PRECISION"
		--detector "$TWELVE_DETECTOR_WEIGHTS" --no-int8-report)
	if [[ -n "$TWELVE_EXPORT_DATA" ]]; then args+=(--data "$TWELVE_EXPORT_DATA"); else args+=(--skip-metric); fi
	run_step "$PY" -m export "${args[@]}"
}

# --- Triton and the gateway ---------------------------------------------------------------------------
triton_command() {
	TRITON_CMD=("$PY" -m export.triton_server --repository "$TWELVE_MODEL_REPOSITORY"
		--http-port "$TWELVE_TRITON_HTTP_PORT" --grpc-port "$TWELVE_TRITON_GRPC_PORT"
		--metrics-port "$TWELVE_TRITON_METRICS_PORT" --startup-timeout "$TWELVE_TRITON_STARTUP_TIMEOUT")
	[[ -z "$TWELVE_TRITONSERVER" ]] || TRITON_CMD+=(--tritonserver "$TWELVE_TRITONSERVER")
	[[ -z "$TWELVE_TRITON_BACKEND_DIRECTORY" ]] || TRITON_CMD+=(--backend-directory "$TWELVE_TRITON_BACKEND_DIRECTORY")
	[[ -z "$TWELVE_TRITON_LOG_FILE" ]] || TRITON_CMD+=(--log-file "$TWELVE_TRITON_LOG_FILE")
}

gateway_command() { # gateway_command TRITON_URL
	GATEWAY_CMD=("$PY" -m server --backend triton --triton-url "$1"
		--host "$TWELVE_HOST" --port "$TWELVE_PORT"
		--model-repository "$TWELVE_MODEL_REPOSITORY" --detector-weights "$TWELVE_DETECTOR_WEIGHTS"
		--cache-dir "$TWELVE_CACHE_DIR" --data-dir "$TWELVE_DATA_DIR")
	[[ ! -d "$TWELVE_CHECKPOINT" ]] || GATEWAY_CMD+=(--checkpoint "$TWELVE_CHECKPOINT")
	[[ ! -f "$TWELVE_EXAMPLES_DIR/examples.json" ]] || GATEWAY_CMD+=(--examples-dir "$TWELVE_EXAMPLES_DIR")
}

case "$MODE" in
health)
	triton_ready
	;;
export)
	ensure_model
	;;
triton)
	ensure_model
	triton_command
	trap - TERM INT
	exec "${TRITON_CMD[@]}" # the launcher stops Triton on SIGTERM
	;;
gateway)
	[[ -f "$TWELVE_DETECTOR_WEIGHTS" ]] || die "no detector weights at $TWELVE_DETECTOR_WEIGHTS"
	: "${TWELVE_TRITON_URL:=127.0.0.1:$TWELVE_TRITON_HTTP_PORT}"
	if [[ "$TWELVE_TRITON_URL" == 127.0.0.1:* ]]; then # a Triton beside it (compose): wait for it
		TWELVE_TRITON_HTTP_PORT="${TWELVE_TRITON_URL##*:}"
		wait_for_triton
	fi
	gateway_command "$TWELVE_TRITON_URL"
	trap - TERM INT
	exec "${GATEWAY_CMD[@]}" # drains on SIGTERM
	;;
all)
	ensure_model
	triton_command
	"${TRITON_CMD[@]}" &
	TRITON_PID=$!
	wait_for_triton "$TRITON_PID"
	export TWELVE_TRITON_URL="127.0.0.1:$TWELVE_TRITON_HTTP_PORT" # the Triton started here, HTTP
	log "Triton ready at $TWELVE_TRITON_URL; starting the gateway on $TWELVE_HOST:$TWELVE_PORT"
	gateway_command "$TWELVE_TRITON_URL"
	"${GATEWAY_CMD[@]}" &
	GATEWAY_PID=$!
	# Either one ending on its own ends the other: a container without Triton or gateway is no server.
	status=0
	wait -n "$GATEWAY_PID" "$TRITON_PID" || status=$?
	trap '' TERM INT
	if kill -0 "$GATEWAY_PID" 2>/dev/null; then
		log "the Triton launcher exited (status $status): stopping the gateway"
	else
		log "the gateway exited (status $status): stopping Triton"
	fi
	stop_all
	exit $((status == 0 ? 1 : status))
	;;
*)
	die "unknown mode '$MODE' (all | triton | gateway | export | health)"
	;;
esac
