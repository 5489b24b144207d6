//! Running a walk-through's shell blocks as written: the blocks of a
//! Markdown file marked ```` ```sh doctest:NAME ````, run by bash in a
//! [`Sandbox`] that stands for the machines they are run on.
//!
//! The sandbox changes only what a test on one unprivileged machine must
//! change, and says so ([`Sandbox::subst`]): the system paths live under a
//! temporary root, the gateway's host name is `localhost`, the well-known
//! ports are free ports, and `useradd`, `chown`, `chgrp`, `install -o/-g`,
//! `systemctl` and `journalctl` are small scripts on the `PATH` (the
//! services run as the test's user; `systemctl` starts a unit's `ExecStart`
//! with its `Environment=` in its `WorkingDirectory=`, after creating its
//! `StateDirectory=`). Each machine keeps its exported variables from one
//! block to the next, as a terminal would; every block starts in the
//! working directory the files were carried to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// The host name the walk-through uses for the gateway.
pub const DOC_HOST: &str = "gw1.example.lg.jp";

/// System paths of the walk-through that live under the sandbox's root.
pub const DOC_PATHS: &[&str] = &[
    "/etc/kakehashi",
    "/etc/xrdp",
    "/etc/systemd/system",
    "/var/lib/kakehashi",
    "/var/backups",
    "/usr/local/bin",
    "/srv/kakehashi-pki",
];

/// One marked block.
#[derive(Debug, Clone)]
pub struct Block {
    /// `NAME` of ```` ```sh doctest:NAME ````.
    pub name: String,
    /// Its text, as written.
    pub text: String,
}

/// Every ```` ```sh doctest:NAME ```` block of `markdown`, in order.
pub fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for line in markdown.lines() {
        match &mut current {
            None => {
                if let Some(name) = line.trim_start().strip_prefix("```sh doctest:") {
                    current = Some(Block {
                        name: name.trim().to_owned(),
                        text: String::new(),
                    });
                }
            }
            Some(b) if line.trim_start().starts_with("```") => {
                out.push(b.clone());
                current = None;
            }
            Some(b) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
        }
    }
    out
}

/// The machines of a walk-through, on this one: a temporary root, shims,
/// the port map, and each machine's saved shell variables.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// Where carried files are and every block starts.
    pub work: PathBuf,
    /// The walk-through's port → the port used here.
    ports: Vec<(u16, u16)>,
}

/// A port free for TCP and for UDP on 127.0.0.1 (for QUIC + TLS listeners on
/// one number). Free when asked; a parallel test may take it before the
/// program binds it, which then fails loudly.
pub fn free_tcp_udp_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

const SHIMS: &[(&str, &str)] = &[
    ("useradd", "#!/bin/sh\nexit 0\n"),
    ("chown", "#!/bin/sh\nexit 0\n"),
    ("chgrp", "#!/bin/sh\nexit 0\n"),
    (
        "install",
        r#"#!/bin/bash
# install without -o/-g (the test runs unprivileged): the modes still apply.
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-g|--owner|--group) shift 2 ;;
    -o*|-g*|--owner=*|--group=*) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
exec /usr/bin/install "${args[@]}"
"#,
    ),
    (
        "journalctl",
        r#"#!/bin/bash
unit=; n=20
while [ $# -gt 0 ]; do
  case "$1" in
    -u) unit=${2%.service}; shift 2 ;;
    -n) n=$2; shift 2 ;;
    *) shift ;;
  esac
done
tail -n "$n" "$KAKEHASHI_DOCTEST_ROOT/log/$unit.log" 2>/dev/null || true
"#,
    ),
    (
        "systemctl",
        r#"#!/bin/bash
# systemctl for units under $KAKEHASHI_DOCTEST_ROOT/etc/systemd/system: start
# runs ExecStart in the background (log: ROOT/log/UNIT.log, pid: ROOT/run/UNIT.pid).
set -eu
R=$KAKEHASHI_DOCTEST_ROOT
cmd=$1; shift
case "$cmd" in daemon-reload|enable|disable|list-timers) [ "${1:-}" = --now ] || exit 0 ;; esac
if [ "$cmd" = enable ] && [ "${1:-}" = --now ]; then shift; cmd=start; fi
unit=${1%.service}
file=$R/etc/systemd/system/$unit.service
pidf=$R/run/$unit.pid
mkdir -p "$R/run" "$R/log"
stop() {
  if [ -f "$pidf" ]; then
    pid=$(cat "$pidf")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidf"
  fi
}
start() {
  [ -f "$file" ] || { echo "Unit $unit.service not found." >&2; exit 5; }
  state=$(sed -n 's/^StateDirectory=//p' "$file")
  [ -z "$state" ] || install -d -m 0750 "$R/var/lib/$state"
  wd=$(sed -n 's/^WorkingDirectory=//p' "$file")
  envs=$(sed -n 's/^Environment=//p' "$file")
  cmdline=$(sed -n 's/^ExecStart=//p' "$file")
  cd "${wd:-/}"
  # shellcheck disable=SC2086
  # A service starts with its own environment, not the shell's.
  env -i PATH=/usr/local/bin:/usr/bin:/bin $envs setsid $cmdline >>"$R/log/$unit.log" 2>&1 </dev/null &
  echo $! >"$pidf"
}
case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "systemctl stand-in: $cmd is not done here" >&2; exit 1 ;;
esac
"#,
    ),
];

impl Sandbox {
    /// A sandbox whose walk-through ports (`doc`) are the given real ones.
    pub fn new(ports: &[(u16, u16)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for p in ["work", "home", "shims", "run", "log", "state"]
            .iter()
            .map(|p| root.join(p))
            .chain(
                [
                    "/etc",
                    "/var/lib",
                    "/usr/local/bin",
                    "/srv",
                    "/etc/systemd/system",
                ]
                .iter()
                .map(|p| root.join(&p[1..])),
            )
        {
            std::fs::create_dir_all(p).expect("sandbox dir");
        }
        for (name, text) in SHIMS {
            let p = root.join("shims").join(name);
            std::fs::write(&p, text).expect("shim");
            set_mode(&p, 0o755);
        }
        let mut ports = ports.to_vec();
        // Longest first, so :13389 is replaced before :3389 could match inside it.
        ports.sort_by_key(|(doc, _)| std::cmp::Reverse(doc.to_string().len()));
        Self {
            work: root.join("work"),
            dir,
            ports,
        }
    }

    /// The temporary root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A walk-through path (`/etc/kakehashi/x`) as it is here.
    pub fn path(&self, doc_path: &str) -> PathBuf {
        PathBuf::from(self.subst(doc_path))
    }

    /// The walk-through's text as it runs here: the gateway's host name is
    /// `localhost`, `0.0.0.0` is `127.0.0.1`, each walk-through port its
    /// free port, and each of [`DOC_PATHS`] is under the root.
    pub fn subst(&self, text: &str) -> String {
        let mut s = text
            .replace(DOC_HOST, "localhost")
            .replace("0.0.0.0:", "127.0.0.1:");
        for (doc, real) in &self.ports {
            s = replace_port(&s, *doc, *real);
        }
        let root = self.root().display().to_string();
        for p in DOC_PATHS {
            s = s.replace(p, &format!("{root}{p}"));
        }
        s
    }

    /// Copies the files of `from` (the repository's `deploy/`) into the
    /// working directory's `deploy/`, as [`Sandbox::subst`] has them.
    pub fn carry_deploy(&self, from: &Path) {
        copy_tree(from, &self.work.join("deploy"), &|t| self.subst(t));
    }

    /// Carries `files` of the walk-through directory `from` (e.g. the CA
    /// directory) into the working directory.
    pub fn carry(&self, from: &str, files: &[&str]) {
        let dir = self.path(from);
        for f in files {
            let name = self.subst(f);
            std::fs::copy(dir.join(&name), self.work.join(&name))
                .unwrap_or_else(|e| panic!("carry {}: {e}", dir.join(&name).display()));
        }
    }

    /// Puts `file` at the walk-through path `doc_path` (a file the
    /// walk-through expects to find, such as the RDP server's key).
    pub fn place(&self, doc_path: &str, file: &Path) {
        let to = self.path(doc_path);
        std::fs::create_dir_all(to.parent().expect("a directory")).expect("mkdir");
        std::fs::copy(file, &to).unwrap_or_else(|e| panic!("place {}: {e}", to.display()));
    }

    /// The environment every block and program runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        let root = self.root();
        let path = format!(
            "{}:{}:{}",
            root.join("shims").display(),
            root.join("usr/local/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        vec![
            ("PATH".into(), path),
            ("HOME".into(), root.join("home").display().to_string()),
            ("KAKEHASHI_DOCTEST_ROOT".into(), root.display().to_string()),
        ]
    }

    /// Where the `systemctl` stand-in writes `unit`'s output.
    pub fn service_log(&self, unit: &str) -> PathBuf {
        self.root().join("log").join(format!("{unit}.log"))
    }

    /// Runs `block` with bash on `machine` (`-e`, `-o pipefail`, traced):
    /// its standard output, or an error with both outputs.
    pub async fn run(&self, machine: &str, block: &Block) -> anyhow::Result<String> {
        let state = self.root().join("state").join(format!("{machine}.sh"));
        let script = format!(
            "[ -f '{state}' ] && source '{state}'\ncd '{work}'\ntrap \"export -p > '{state}'\" EXIT\nset -eo pipefail -x\n{body}",
            state = state.display(),
            work = self.work.display(),
            body = self.subst(&block.text),
        );
        let file = self
            .root()
            .join("state")
            .join(format!("block-{}.sh", block.name));
        std::fs::write(&file, &script)?;
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new("bash")
                .arg(&file)
                .envs(self.env())
                .env("PS4", "+ ")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("block {} still running after 120 s", block.name))?
        .with_context(|| format!("cannot run bash for block {}", block.name))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "block {} failed ({}) on {machine}:\n{}\n--- stdout:\n{stdout}\n--- stderr (trace):\n{}",
                block.name,
                out.status,
                block.text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }
}

impl Drop for Sandbox {
    /// Kills what the `systemctl` stand-in started.
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.root().join("run")) else {
            return;
        };
        for pid in dir
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

/// `:doc` (not followed by a digit) replaced by `:real`.
fn replace_port(s: &str, doc: u16, real: u16) -> String {
    let pat = format!(":{doc}");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(&pat) {
        let after = &rest[i + pat.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(&pat);
        } else {
            out.push_str(&format!(":{real}"));
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn copy_tree(from: &Path, to: &Path, text: &dyn Fn(&str) -> String) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, text);
        } else {
            match std::fs::read_to_string(&src) {
                Ok(t) => std::fs::write(&dst, text(&t)).expect("write"),
                Err(_) => {
                    std::fs::copy(&src, &dst).expect("copy");
                }
            }
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    #[cfg(not(unix))]
    let _ = (p, mode);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_substitutions() {
        let md = "text\n```sh doctest:one\necho gw1.example.lg.jp:443 :4430 :13389\n```\n```sh\nnot me\n```\n";
        let b = blocks(md);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].name, "one");
        let sb = Sandbox::new(&[(443, 5000), (13389, 6000), (3389, 7000)]);
        assert_eq!(sb.subst(&b[0].text), "echo localhost:5000 :4430 :6000\n");
        let etc = sb.subst("/etc/kakehashi/gateway.toml");
        assert!(etc.starts_with(&sb.root().display().to_string()), "{etc}");
    }
}
