# Shared by the install scripts: run a command as root, through sudo only when not root
# (a root-only machine often has no sudo at all).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: $1 needs root: run this as root, or install sudo" >&2
    return 1
  fi
}
