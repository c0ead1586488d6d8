#!/usr/bin/env bash
# Makes the release files of the version in VERSION, from the commit HEAD (git archive), in
# dist/ (or the directory given):
#   svccomm-<ver>.tar.gz         the source tarball (prefix svccomm-<ver>/)
#   svccomm-<ver>-1.rockspec     svccomm-scm-1.rockspec with that version and the tarball as
#                                its source (url + md5)
#   svccomm-<ver>-1.src.rock     `luarocks pack` of it: `luarocks install ./svccomm-<ver>-1.src.rock`
# SVCCOMM_RELEASE_URL is the folder URL the tarball will be published under (default: file://
# of the output directory, so that the rockspec works from this machine).
# Refuses when VERSION and the top entries of CHANGELOG.md and debian/changelog disagree.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd -P)
ver=$(head -n1 VERSION)
[[ $ver =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
	echo "release.sh: VERSION: '$ver' is not MAJOR.MINOR.PATCH" >&2
	exit 2
}
grep -q "^## $ver\b" CHANGELOG.md || {
	echo "release.sh: CHANGELOG.md has no '## $ver' entry" >&2
	exit 2
}
if [ -f debian/changelog ]; then
	deb=$(head -n1 debian/changelog | sed -n 's/^svccomm (\([^)-]*\)-[^)]*).*/\1/p')
	[ "$deb" = "$ver" ] || {
		echo "release.sh: debian/changelog is at '$deb', VERSION at '$ver'" >&2
		exit 2
	}
fi
git diff --quiet HEAD -- || echo "release.sh: note: uncommitted changes are not in the tarball" >&2

name=svccomm-$ver
tarball=$out/$name.tar.gz
git archive --format=tar.gz --prefix="$name/" -o "$tarball" HEAD
md5=$(md5sum "$tarball" | cut -d' ' -f1)
url=${SVCCOMM_RELEASE_URL:-file://$out}/$name.tar.gz

rockspec=$out/$name-1.rockspec
sed -e '/^-- /d' \
	-e "s|^version = \"scm-1\"|version = \"$ver-1\"|" \
	-e "s|^   url = .*|   url = \"$url\",\n   md5 = \"$md5\",\n   dir = \"$name\",|" \
	svccomm-scm-1.rockspec >"$rockspec"
grep -q "^version = \"$ver-1\"" "$rockspec" || {
	echo "release.sh: could not set the version in $rockspec" >&2
	exit 1
}
# luarocks pack fetches the source through the url: pack from a copy of the rockspec that
# points at the local tarball, so a SVCCOMM_RELEASE_URL not published yet works as well
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^   url = .*|   url = \"file://$tarball\",|" "$rockspec" >"$tmp/$name-1.rockspec"
(cd "$tmp" && luarocks --lua-version 5.4 pack "$name-1.rockspec" >/dev/null)
mv "$tmp/$name-1.src.rock" "$out/"
echo "$tarball"
echo "$rockspec"
echo "$out/$name-1.src.rock"
