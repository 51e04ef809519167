//! `vireoctl console`: the VM's serial console on this terminal, raw, until Ctrl+].

use std::io::{Read, Write};
use std::os::fd::AsFd;

use manager_types::api::CONSOLE_PROTOCOL;
use manager_types::client::{Client, ClientError};
use nix::sys::termios::{self, SetArg, Termios};

/// The detach key: Ctrl+] (GS), as telnet and virsh.
const DETACH: u8 = 0x1d;

/// The terminal's settings, restored on drop.
struct Raw(Termios);

impl Raw {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.0);
    }
}

/// Attach to `name`'s console; returns when detached or when vireod closes it (the VM
/// stopped).
pub fn attach(client: &Client, name: &str, history: usize) -> Result<(), ClientError> {
    let client = client.clone().with_timeout(None);
    let path = format!("/v1/vms/{name}/console?history={history}");
    let opened = client.open(
        "GET",
        &path,
        None,
        &[("Upgrade", CONSOLE_PROTOCOL), ("Connection", "Upgrade")],
    )?;
    if opened.status != 101 {
        let mut body = String::new();
        let mut reader = opened.reader;
        let _ = reader.read_to_string(&mut body);
        return manager_types::client::Reply {
            status: opened.status,
            body,
        }
        .ok()
        .map(|_| ());
    }
    let tty = Raw::enter();
    if tty.is_some() {
        eprint!("Connected to {name}'s console; detach with Ctrl+]\r\n");
    }
    let mut reader = opened.reader;
    let mut writer = reader.get_ref().try_clone().map_err(|e| ClientError::Io {
        path: client.path().to_path_buf(),
        source: e,
    })?;
    let interactive = tty.is_some();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // Not a terminal and its input ended: keep watching the output.
                    return;
                }
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if interactive && let Some(at) = chunk.iter().position(|&b| b == DETACH) {
                let _ = writer.write_all(&chunk[..at]);
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
    });
    let mut stdout = std::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tty);
    if interactive {
        eprintln!();
    }
    Ok(())
}
