# The meson setup options of CI's build directories, shared by .ci/run and
# scripts/stress so a stress run tests exactly what CI builds. Sourced, not run.
# shellcheck shell=bash
# shellcheck disable=SC2034
ci_asan_opts=(-Dwerror=true -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false
              -Dexamples=false -Dbench=false)
ci_tsan_opts=(-Dwerror=true -Dbuildtype=debug -Doptimization=1 -Db_sanitize=thread
              -Dexamples=false -Dbench=false)
