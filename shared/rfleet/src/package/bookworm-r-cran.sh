#!/bin/sh
# Regenerates bookworm-r-cran.txt: the r-cran-* packages Debian bookworm has (main, with
# bookworm-updates and bookworm-security), which `rfleet package` checks the R packages
# of a model against. Run it on Debian bookworm (the worker image's base), for example
#   docker run --rm -v "$PWD":/out -w /out debian:bookworm-slim sh bookworm-r-cran.sh
# `apt-cache search --names-only` also lists packages that only provide such a name
# (r-base-core provides r-cran-stats and the like): the grep keeps the names themselves.
set -eu
cd "$(dirname "$0")"
apt-get update -qq
{
    echo "# The r-cran-* packages of Debian bookworm, one a line, written by bookworm-r-cran.sh"
    echo "# (apt-cache search --names-only '^r-cran-'); run it again to bring this list up to date."
    apt-cache search --names-only '^r-cran-' | cut -d' ' -f1 | grep '^r-cran-' | LC_ALL=C sort -u
} > bookworm-r-cran.txt
