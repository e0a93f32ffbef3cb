#!/usr/bin/env bash
# Builds the sample_app release tarball that the beamops.release roles deploy.
#
#   examples/sample_app/build.sh VERSION [OUT_DIR]
#
# Writes OUT_DIR/sample_app-VERSION.tar.gz and OUT_DIR/sample_app-VERSION.tar.gz.sha256
# (sha256sum format). OUT_DIR defaults to examples/sample_app/dist. Prints the tarball path
# and its size on stdout; mix's progress output goes to stderr.
#
# Needs only Erlang/OTP and Elixir (mix): the app has no dependencies, hex is never used.
set -euo pipefail

readonly APP=sample_app
# SemVer 2.0.0 (https://semver.org), as a POSIX extended regular expression.
readonly SEMVER_RE='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?$'

die() {
  echo "build.sh: $*" >&2
  exit 2
}

validate_args() {
  if [[ $# -lt 1 || $# -gt 2 ]]; then
    die "usage: build.sh VERSION [OUT_DIR] (got $# arguments)"
  fi
  if [[ ! $1 =~ $SEMVER_RE ]]; then
    die "VERSION must be a SemVer 2.0 version such as 1.2.3 or 1.2.3-rc.1+build.5, got '$1'"
  fi
  command -v mix >/dev/null || die "mix (Elixir) not found in PATH; install elixir and erlang"
  command -v sha256sum >/dev/null || die "sha256sum not found in PATH; install coreutils"
}

# Builds in a private copy of the sources: concurrent builds of different versions must
# not share _build (mix would mix their compiled .app files and release directories).
build_release() {
  local version=$1 work=$2 source_dir=$3
  cp -R "$source_dir/mix.exs" "$source_dir/config" "$source_dir/lib" "$source_dir/rel" "$work/"
  (
    cd "$work"
    export MIX_ENV=prod HEX_OFFLINE=1 MIX_HOME="$work/.mix" SAMPLE_APP_VERSION="$version"
    mix release --overwrite "$APP"
  ) >&2
}

# Copies into OUT_DIR under a temporary name and renames, so a reader never sees a
# half-written tarball or a checksum that does not match it.
publish() {
  local built=$1 out_dir=$2 name=$3
  local tmp_tarball="$out_dir/.$name.$$.tmp" tmp_sum="$out_dir/.$name.sha256.$$.tmp"
  cp "$built" "$tmp_tarball"
  (cd "$(dirname "$built")" && sha256sum "$name") >"$tmp_sum"
  mv -f "$tmp_tarball" "$out_dir/$name"
  mv -f "$tmp_sum" "$out_dir/$name.sha256"
}

main() {
  validate_args "$@"
  local version=$1
  local source_dir
  source_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  local out_dir=${2:-$source_dir/dist}
  mkdir -p "$out_dir"
  out_dir=$(cd "$out_dir" && pwd)

  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/$APP-build.XXXXXX")
  # shellcheck disable=SC2064  # expand $work now: it is local to main
  trap "rm -rf '$work'" EXIT

  build_release "$version" "$work" "$source_dir"
  local name="$APP-$version.tar.gz"
  local built="$work/_build/prod/$name"
  [[ -f $built ]] || die "mix release did not produce $built"
  publish "$built" "$out_dir" "$name"

  echo "tarball: $out_dir/$name"
  echo "size: $(stat -c %s "$out_dir/$name") bytes"
}

main "$@"
