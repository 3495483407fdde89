# Sourced by the load scripts. wrk_ok LABEL OUTPUT exits the script when wrk
# saw an answer other than 2xx/3xx, a socket error, or could not connect at
# all: such a run measured a failing proxy (or, on a port another run took,
# someone else's, or nothing), and its CPU per request must not be printed as
# a figure.
wrk_ok() {
  if echo "$2" | grep -qE 'Non-2xx or 3xx responses|Socket errors|unable to connect' ||
    ! echo "$2" | grep -qE '[0-9]+ requests in'; then
    echo "$1: wrk saw failed requests; this run is not a measurement:" >&2
    echo "$2" | grep -E 'requests in|Non-2xx|Socket errors|unable to connect' >&2
    exit 1
  fi
}
