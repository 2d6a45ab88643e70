#!/bin/sh
# Orthanc's configuration: the image's orthanc.json with every ORTHANC__* environment variable laid over
# it, as the orthancteam images do: ORTHANC__DICOM_AET=X sets "DicomAet", ORTHANC__DICOM_WEB__ENABLE sets
# "Enable" in "DicomWeb" ("__" between levels, each word capitalised); a value that parses as JSON (true,
# 4242, {"AINODE": [...]}) is taken as that JSON, anything else as a string.
set -eu
config=/tmp/orthanc.json
jq '. * (reduce ($ENV | to_entries[] | select(.key | startswith("ORTHANC__"))) as $e ({};
        setpath($e.key | ltrimstr("ORTHANC__") | split("__")
                       | map(split("_") | map(.[0:1] + (.[1:] | ascii_downcase)) | join(""));
                $e.value as $v | try ($v | fromjson) catch $v)))' /etc/orthanc-docker/orthanc.json >"$config"
exec Orthanc "$@" "$config"
