# The operator's side of the in-guest contract, run by exec in container `app` as
#   sh -c <this> kd-guest setup  <container-id> <max-log> <bytes> <cli-bytes> <cli-kind py|tgz> <layout new|old> <configure 1|0> <systemd 1|0> <package-url|""> [<src> <dest-dir> <mode> <owner> <group>]...
#   sh -c <this> kd-guest notify <container-id> <max-log> <bytes> <layout new|old> <startscript arguments...>
#   sh -c <this> kd-guest refresh <container-id> <max-log> <bytes> <layout new|old>
# with the member's configmeta.json (<bytes> long) on stdin, for `setup` followed by configcli
# (<cli-bytes> long, 0 = do not install it): this operator's Python source (`py`) or KubeDirector's
# configcli.tgz (`tgz`). Exactly that many bytes are read: an
# exec's stdin is not reliably closed at the far end (kwok's simulation never sees EOF), so nothing
# here waits for one. Every call returns quickly except `notify`, which runs
# the script in the foreground (the operator bounds it with a timeout, outside any worker).
# It reports on the first line of stdout: `kd-result started|running` or `kd-result done <code>`
# (`done <code> fresh` when this call wrote configmeta.json; `started` always did), followed by
# the tail of the script's stdout (its stderr tail goes to stderr); the exec itself
# exits 0 so that the report never depends on how an exec transports exit codes.
# KD_GUEST_ROOT is unset in a real container; a simulated guest (kwok's local exec) sets it to the
# member's own directory.
set -u
op="$1"; cid="$2"; max="$3"; len="$4"; shift 4
R="${KD_GUEST_ROOT:-}"
G="$R/opt/guestconfig"
E="$R/etc/guestconfig"
mkdir -p "$G" "$E" || { echo "kd-result done 126"; echo "cannot create $G and $E" >&2; exit 0; }

fresh=""
inject() { # layout: KubeDirector's mode is 644 for the old layout, 600 for the new
  m=644; [ "$1" = new ] && m=600
  head -c "$len" > "$E/configmeta.json.kd-new" && chmod "$m" "$E/configmeta.json.kd-new" &&
    mv -f "$E/configmeta.json.kd-new" "$E/configmeta.json" && fresh=" fresh"
}

# configcli where KubeDirector puts it: the module where the image's Python imports it (for the new
# layout its user site under PYTHONUSERBASE=/usr/local), the commands in <base>/bin (/usr/local for
# the new layout, /usr for the old; the new layout also links them into /usr/bin). Reads the source
# from stdin; an image without Python gets no configcli (logged in configcli.install.log).
install_configcli() { # cli-bytes kind layout
  [ "$1" -gt 0 ] || return 0
  if [ "$2" = tgz ]; then install_package "$1" "$3"; return; fi
  set -- "$1" "$3"
  src="$G/configcli.py.kd-new"
  head -c "$1" > "$src" || return 1
  py="$(command -v python3 || command -v python)" || {
    echo "no python3 in the image: configcli not installed" > "$G/configcli.install.log"; rm -f "$src"; return 0; }
  if [ "$2" = new ]; then
    base=/usr/local
    lib="$(PYTHONUSERBASE=/usr/local "$py" -c 'import site; print(site.getusersitepackages())')"
  else
    base=/usr
    lib="$("$py" -c 'import site; print((site.getsitepackages() or [site.getusersitepackages()])[0])')"
  fi
  [ -n "$lib" ] || return 1
  mkdir -p "$R$lib" "$R$base/bin" && mv -f "$src" "$R$lib/configcli.py" || return 1
  printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\nimport configcli\nsys.exit(configcli.main())\n' \
    "$py" "$R$lib" > "$R$base/bin/configcli" && chmod 755 "$R$base/bin/configcli" || return 1
  for l in ccli bdvcli bd_vcli configmacro; do ln -sf "$R$base/bin/configcli" "$R$base/bin/$l" || return 1; done
  if [ "$2" = new ]; then
    mkdir -p "$R/usr/bin"
    for l in configcli ccli bdvcli bd_vcli configmacro; do ln -sf "$R$base/bin/configcli" "$R/usr/bin/$l" || return 1; done
  fi
  echo "configcli in $R$lib, commands in $R$base/bin" > "$G/configcli.install.log"
}

# KubeDirector's configcli.tgz, installed as KubeDirector does: unpacked in /tmp, its
# `configcli-*/install` run (`--user` with PYTHONUSERBASE=/usr/local for the new layout), the
# `bdvcli`/`bd_vcli` links made in <base>/bin; skipped when <base>/bin/configcli is there already.
install_package() { # bytes layout
  base=/usr; opt=""
  if [ "$2" = new ]; then base=/usr/local; opt=--user; fi
  if [ -e "$R$base/bin/configcli" ]; then head -c "$1" > /dev/null; return 0; fi
  t="$R/tmp"
  mkdir -p "$t" && head -c "$1" > "$t/configcli.tgz" || return 1
  rm -rf "$t"/configcli-*/
  (cd "$t" && tar xzf configcli.tgz) || return 1
  for i in "$t"/configcli-*/install; do
    [ -f "$i" ] || { echo "configcli.tgz holds no configcli-*/install" > "$G/configcli.install.log"; return 1; }
    chmod u+x "$i" && PYTHONUSERBASE=/usr/local "$i" $opt > "$G/configcli.install.log" 2>&1 || return 1
  done
  rm -rf "$t"/configcli-* "$t/configcli.tgz"
  ln -sf "$R$base/bin/configcli" "$R$base/bin/bdvcli" && ln -sf "$R$base/bin/configcli" "$R$base/bin/bd_vcli"
}

startscript() {
  for s in "$G"/*/startscript "$G/startscript"; do
    [ -f "$s" ] && { echo "$s"; return 0; }
  done
  return 1
}

fetch() { # url file; errors in $G/fetch.err
  case "$1" in
    file://*) cp "${1#file://}" "$2" ;;
    http://*|https://*)
      if command -v curl > /dev/null; then curl -fsSL -o "$2" "$1"
      else wget -q -O "$2" "$1"; fi ;;
    *) echo "unsupported URL $1 (allowed: file://, http://, https://)" >&2; false ;;
  esac 2> "$G/fetch.err"
}

failed() { # code message: a setup that cannot proceed, reported as finished with `code`
  echo "kd-result done $1"; echo "$2"; [ -s "$G/fetch.err" ] && cat "$G/fetch.err"; exit 0
}

record() { # code: this container's line in configure.status (KubeDirector's file has no final newline)
  if [ -s "$st" ] && [ -n "$(tail -c 1 "$st")" ]; then echo >> "$st"; fi
  echo "$cid=$1" >> "$st"
}

report() { # code stdout-file stderr-file
  echo "kd-result done $1$fresh"
  [ -f "$2" ] && tail -c "$max" "$2"
  [ -f "$3" ] && tail -c "$max" "$3" >&2
  exit 0
}

case "$op" in
setup)
  cli="$1"; kind="$2"; layout="$3"; run="$4"; sysd="$5"; url="$6"; shift 5
  st="$G/configure.status"
  # The exit code recorded for this container (ids hold `/` and `.`: compared as plain strings).
  code="$([ -f "$st" ] && awk -v c="$cid=" 'index($0, c) == 1 { v = substr($0, length(c) + 1) } END { print v }' "$st")"
  if [ -n "$code" ]; then
    report "$code" "$G/configure.stdout" "$G/configure.stderr"
  fi
  # KubeDirector's own record of a configure still running in this container (`<id>=`, no code yet).
  if [ -f "$st" ] && awk -v l="$cid=" '$0 == l { f = 1 } END { exit !f }' "$st"; then
    echo "kd-result running"
    exit 0
  fi
  # A new container whose /opt/guestconfig survived (a persistent volume) and holds a successful
  # configure keeps it, as KubeDirector does: --configure is not run again.
  if [ -f "$st" ] && grep -q '=0$' "$st"; then
    # Fresh configmeta, and configcli again (the new layout's /usr/bin links are not persisted).
    inject "$layout" && install_configcli "$cli" "$kind" "$layout" || failed 126 "cannot write configmeta or configcli"
    record 0
    report 0 "$G/configure.stdout" "$G/configure.stderr"
  fi
  if [ -f "$G/configure.started" ] && [ "$(cat "$G/configure.started")" = "$cid" ]; then
    echo "kd-result running"
    exit 0
  fi
  # A systemd app is set up once systemd runs in the member, as KubeDirector waits for it.
  if [ "$sysd" = 1 ] && ! "${KD_GUEST_SYSTEMCTL:-systemctl}" status systemd-journald > /dev/null 2>&1; then
    echo "kd-result running"
    exit 0
  fi
  : > "$G/fetch.err"
  inject "$layout" || failed 126 "cannot write $E/configmeta.json"
  install_configcli "$cli" "$kind" "$layout" || failed 126 "cannot install configcli"
  shift
  # The role's fileInjections, in order: fetched into <dest-dir>, mode (numeric) and owner applied.
  while [ "$#" -ge 5 ]; do
    src="$1"; dest="$R$2"; mode="$3"; owner="$4"; group="$5"; shift 5
    mkdir -p "$dest" || failed 124 "cannot create $2"
    f="$dest/$(basename "${src%%\?*}")"
    fetch "$src" "$f" || failed 124 "file injection $src failed:"
    if [ -n "$mode" ]; then chmod "$(printf '%o' "$mode")" "$f" || failed 124 "chmod $mode $f failed"; fi
    if [ -n "$owner$group" ]; then chown "$owner${group:+:$group}" "$f" || failed 124 "chown $owner:$group $f failed"; fi
  done
  if [ -z "$url" ]; then # files only, no package: done
    record 0
    report 0 /dev/null /dev/null
  fi
  pkg="$G/kd-package.tgz"
  fetch "$url" "$pkg" || failed 125 "fetching $url failed:"
  tar -xzf "$pkg" -C "$G" 2> "$G/fetch.err" || failed 125 "unpacking $url failed:"
  s="$(startscript)" || { echo "kd-result done 127"; echo "no startscript in $url"; exit 0; }
  chmod +x "$s"
  rm -f "$st"
  if [ "$run" != 1 ]; then # the role's eventList has no `configure`: installed, never run
    record 0
    report 0 /dev/null /dev/null
  fi
  echo "$cid" > "$G/configure.started"
  # Detached, with every descriptor redirected: the exec returns at once.
  (cd "$G" && nohup sh -c '"$1" --configure > "$2/configure.stdout" 2> "$2/configure.stderr"; echo "$3=$?" >> "$2/configure.status"' \
     kd-configure "$s" "$G" "$cid" < /dev/null > /dev/null 2>&1 &)
  echo "kd-result started"
  ;;
notify)
  layout="$1"; shift
  inject "$layout" || { echo "kd-result done 126"; echo "cannot write $E/configmeta.json" >&2; exit 0; }
  s="$(startscript)" || { echo "kd-result done 127"; echo "no startscript in $G"; exit 0; }
  (cd "$G" && "$s" "$@" > "$G/notify.stdout" 2> "$G/notify.stderr" < /dev/null)
  report "$?" "$G/notify.stdout" "$G/notify.stderr"
  ;;
refresh) # a configured member's configmeta.json, written again after a spec change
  inject "$1" || { echo "kd-result done 126"; echo "cannot write $E/configmeta.json" >&2; exit 0; }
  report 0 /dev/null /dev/null
  ;;
*)
  echo "kd-result done 2"; echo "unknown operation $op" >&2
  ;;
esac
