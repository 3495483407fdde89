# Sourced by the load scripts. wrk_ok LABEL OUTPUT exits the script when wrk
# saw an answer other than 2xx/3xx or a socket error: such a run measured a
# failing proxy (or, on a port another run took, someone else's), and its
# CPU per request must not be printed as a figure.
wrk_ok() {
  if echo "$2" | grep -qE 'Non-2xx or 3xx responses|Socket errors'; then
    echo "$1: wrk saw failed requests; this run is not a measurement:" >&2
    echo "$2" | grep -E 'requests in|Non-2xx|Socket errors' >&2
    exit 1
  fi
}
