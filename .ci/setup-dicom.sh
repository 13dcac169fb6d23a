#!/usr/bin/env bash
# The DICOM tools the tests run against (Debian 12 packages): dcm2niix (the
# reference for voxel order and affine), dicom3tools (dciodvfy), Orthanc with
# its DICOMweb plugin (a real PACS). Idempotent: fast when they are installed.
# The tests start Orthanc themselves (loopback only); the Debian service is not used.
set -euo pipefail
need=()
command -v dcm2niix >/dev/null || need+=(dcm2niix)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-dicom: need root to install ${need[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting the Debian Orthanc service (policy-rc.d: 101 = action forbidden).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap 'if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
