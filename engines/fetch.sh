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

fetch_flink() {
  local target tmp
  target="$(flink_dir)"
  if [[ -f "$target/.complete" ]]; then
    echo "flink $FLINK_VERSION: cached in $target"
  else
    echo "flink $FLINK_VERSION: fetching from Maven Central"
    tmp="$(mktemp -d "$CACHE/.flink.XXXXXX")"
    (cd "$HERE/flink/cluster" && "${MVN[@]}" dependency:copy-dependencies \
      -Dflink.version="$FLINK_VERSION" -DincludeScope=runtime -DoutputDirectory="$tmp/lib")
    touch "$tmp/.complete" && chmod 755 "$tmp"
    rm -rf "$target" && mv "$tmp" "$target"
  fi

  target="$(job_server_dir)"
  if [[ -f "$target/.complete" ]]; then
    echo "beam flink job server $BEAM_FLINK_RUNNER_VERSION (flink $FLINK_MINOR): cached in $target"
    return
  fi
  echo "beam flink job server $BEAM_FLINK_RUNNER_VERSION (flink $FLINK_MINOR): fetching from Maven Central"
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
  touch "$tmp/.complete" && chmod 755 "$tmp"
  rm -rf "$target" && mv "$tmp" "$target"
}

fetch_prism() {
  local target tmp
  target="$(prism_dir)"
  if [[ -f "$target/.complete" ]]; then
    echo "prism $PRISM_VERSION: cached in $target"
    return
  fi
  echo "prism $PRISM_VERSION: building github.com/apache/beam/sdks/v2/go/cmd/prism@$PRISM_VERSION"
  tmp="$(mktemp -d "$CACHE/.prism.XXXXXX")"
  GOBIN="$tmp" GOFLAGS=-buildvcs=false \
    go install "github.com/apache/beam/sdks/v2/go/cmd/prism@$PRISM_VERSION"
  touch "$tmp/.complete" && chmod 755 "$tmp"
  rm -rf "$target" && mv "$tmp" "$target"
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
