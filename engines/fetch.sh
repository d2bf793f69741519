#!/usr/bin/env bash
# Fetches the engines the engine tests run, by version, through the registries' own clients, into
# the cache folder; a second run finds them there and downloads nothing.
#
#   engines/fetch.sh [flink] [prism]        (no argument: both)
#
# flink: the Flink cluster's jars and Beam's Flink job server (Maven Central, through `mvn`, which
#        also keeps them in ~/.m2), plus a launcher jar for the job server whose manifest names its
#        dependencies, so `java -jar` and the FlinkRunner's --flink_job_server_jar run it.
# prism: Prism built from the Go module github.com/apache/beam/sdks/v2/go/cmd/prism (`go install`,
#        through the Go module proxy; the module and build caches are Go's own).
#
# Layout under ${SAFETY_PRETRAINING_CACHE:-~/.cache/safety-pretraining}/engines/:
#   flink-<FLINK_VERSION>/lib/*.jar
#   beam-flink-job-server-<BEAM_FLINK_RUNNER_VERSION>-flink-<FLINK_MINOR>/job-server.jar, lib/*.jar
#   prism-<PRISM_VERSION>/prism
# Each folder is complete once it holds `.complete`; it is built in a temporary folder and moved.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${SAFETY_PRETRAINING_CACHE:-$HOME/.cache/safety-pretraining}/engines"
MVN=(mvn -B -q -Dstyle.color=never)

flink_dir() { echo "$CACHE/flink-$FLINK_VERSION"; }
job_server_dir() { echo "$CACHE/beam-flink-job-server-$BEAM_FLINK_RUNNER_VERSION-flink-$FLINK_MINOR"; }
prism_dir() { echo "$CACHE/prism-$PRISM_VERSION"; }

# Prints the Class-Path manifest header naming lib/*.jar of the current folder, in manifest lines
# of at most 72 bytes (continuation lines start with one space).
class_path_header() {
  local entries=""
  for jar in lib/*.jar; do entries+=" $jar"; done
  printf 'Class-Path:%s\n' "$entries" | awk '{
    line = $0; print substr(line, 1, 72); line = substr(line, 73)
    while (length(line) > 0) { print " " substr(line, 1, 71); line = substr(line, 72) }
  }'
}

# True (saying so) when `target` ($2) already holds a complete copy of `what` ($1).
cached() {
  if [[ -f "$2/.complete" ]]; then
    echo "$1: cached in $2"
    return 0
  fi
  return 1
}

# Marks the fetched folder $1 complete and moves it into place as $2.
put_in_place() {
  touch "$1/.complete" && chmod 755 "$1"
  rm -rf "$2" && mv "$1" "$2"
}

fetch_flink() {
  local target tmp what
  target="$(flink_dir)"
  what="flink $FLINK_VERSION"
  if ! cached "$what" "$target"; then
    echo "$what: fetching from Maven Central"
    tmp="$(mktemp -d "$CACHE/.flink.XXXXXX")"
    (cd "$HERE/flink/cluster" && "${MVN[@]}" dependency:copy-dependencies \
      -Dflink.version="$FLINK_VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp/lib")
    put_in_place "$tmp" "$target"
  fi

  target="$(job_server_dir)"
  what="beam flink job server $BEAM_FLINK_RUNNER_VERSION (flink $FLINK_MINOR)"
  cached "$what" "$target" && return
  echo "$what: fetching from Maven Central"
  tmp="$(mktemp -d "$CACHE/.job-server.XXXXXX")"
  (cd "$HERE/flink/job-server" && "${MVN[@]}" dependency:copy-dependencies \
    -Dbeam.version="$BEAM_FLINK_RUNNER_VERSION" -Dflink.minor="$FLINK_MINOR" \
    -DincludeScope=runtime -DoutputDirectory="$tmp/lib")
  (
    cd "$tmp"
    { echo "Main-Class: org.apache.beam.runners.flink.FlinkJobServerDriver"; class_path_header; } \
      > MANIFEST.MF
    mkdir empty && jar --create --file job-server.jar --manifest MANIFEST.MF -C empty .
    rm -r empty MANIFEST.MF
  )
  put_in_place "$tmp" "$target"
}

fetch_prism() {
  local target tmp
  target="$(prism_dir)"
  cached "prism $PRISM_VERSION" "$target" && return
  echo "prism $PRISM_VERSION: building github.com/apache/beam/sdks/v2/go/cmd/prism@$PRISM_VERSION"
  tmp="$(mktemp -d "$CACHE/.prism.XXXXXX")"
  GOBIN="$tmp" GOFLAGS=-buildvcs=false \
    go install "github.com/apache/beam/sdks/v2/go/cmd/prism@$PRISM_VERSION"
  put_in_place "$tmp" "$target"
}

mkdir -p "$CACHE"
engines=("$@")
[[ ${#engines[@]} -gt 0 ]] || engines=(flink prism)
for engine in "${engines[@]}"; do
  case "$engine" in
    flink) fetch_flink ;;
    prism) fetch_prism ;;
    *) echo "unknown engine: $engine (flink, prism)" >&2; exit 2 ;;
  esac
done
