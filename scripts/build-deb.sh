#!/usr/bin/env bash
# Builds the Debian package of svccomm (debian/, debhelper) offline on Debian 12 and checks it
# with lintian (no errors allowed). The build runs in a copy of the working tree as git sees it
# (tracked and untracked files, minus .gitignore), so debian/'s build leftovers stay out of the
# checkout. The .deb, .buildinfo and .changes land in the directory given (default dist/deb).
#   scripts/build-deb.sh [outdir]          build and lintian
#   scripts/build-deb.sh --test [outdir]   then `apt-get install` it on this machine, run
#                                          `svccomm version` and `svccomm check` on the installed
#                                          example, and remove it again (root or sudo)
# Needs: dpkg-dev debhelper fakeroot lintian (scripts/install-deps.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

test_it=0
if [ "${1:-}" = --test ]; then
	test_it=1
	shift
fi
mkdir -p "${1:-dist/deb}"
out=$(cd "${1:-dist/deb}" && pwd -P)
ver=$(head -n1 VERSION)
deb=$(dpkg-parsechangelog -S Version)
[ "${deb%-*}" = "$ver" ] || {
	echo "build-deb.sh: debian/changelog is at $deb, VERSION at $ver" >&2
	exit 2
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/svccomm-$ver
mkdir "$src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
	[ -f "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$src"

start=$SECONDS
(cd "$src" && DEB_BUILD_OPTIONS="parallel=2 nocheck" dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) || {
	tail -n 40 "$work/build.log" >&2
	echo "build-deb.sh: dpkg-buildpackage failed (log above)" >&2
	exit 1
}
echo "build-deb.sh: dpkg-buildpackage took $((SECONDS - start)) s"
rm -f "$out"/svccomm_* "$out"/svccomm-dbgsym_*
mv "$work"/svccomm_* "$work"/svccomm-dbgsym_* "$out"/
changes=$(ls "$out"/svccomm_*.changes)
lintian --fail-on error --suppress-tags-from-file /dev/null "$changes"
echo "build-deb.sh: lintian: no errors"
ls "$out"/svccomm_*.deb

[ $test_it = 1 ] || exit 0
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)
pkg=$(ls "$out"/svccomm_*.deb)
if dpkg-query -W -f='${Status}' svccomm 2>/dev/null | grep -q installed; then
	echo "build-deb.sh: svccomm is already installed; not testing over it" >&2
	exit 1
fi
had_user=0
getent passwd svccomm >/dev/null && had_user=1
# purge leaves the system user (Debian's rule); the test removes the one it made
remove() {
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q svccomm >/dev/null
	if [ $had_user = 0 ] && getent passwd svccomm >/dev/null; then
		"${SUDO[@]}" deluser --quiet --system svccomm 2>/dev/null
		! getent group svccomm >/dev/null || "${SUDO[@]}" delgroup --quiet --system svccomm
	fi
}
trap 'remove; rm -rf "$work"' EXIT
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >/dev/null
set -x
/usr/bin/svccomm version
getent passwd svccomm
cp -r /usr/share/doc/svccomm/examples "$work/example"
(cd "$work/example" && env -u SVCCOMM_SETTINGS -u LUA_CPATH -u LUA_CPATH_5_4 /usr/bin/svccomm check)
man -w svccomm svccomm-runconsumer svccomm-settings
lua5.4 -e 'print(require("svccomm").VERSION, package.searchpath("svccomm.core", package.cpath))'
bash -c 'source /usr/share/bash-completion/completions/svccomm && complete -p svccomm'
set +x
echo "build-deb.sh: the installed package works"
