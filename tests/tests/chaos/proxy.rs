//! A TCP proxy between one agent and the controller that the chaos run controls: it passes
//! bytes, drops every connection (and each new one as it arrives), or stalls (holds connections
//! open and forwards nothing until it passes again) — a partition without network namespaces.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Connections are closed, new ones closed as they are accepted.
    Drop,
    /// Connections stay open; nothing is forwarded either way.
    Stall,
}

#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `upstream_port` there.
    pub async fn start(upstream_port: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, watcher) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *watcher.borrow() == Mode::Drop {
                    continue;
                }
                let watcher = watcher.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        pipe(client, server, watcher).await;
                    }
                });
            }
        });
        Ok(Proxy { port, mode, task })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Drop => return,
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass => {}
        }
        tokio::select! {
            r = cr.read(&mut up) => match r {
                Ok(n) if n > 0 => if sw.write_all(&up[..n]).await.is_err() { return },
                _ => return,
            },
            r = sr.read(&mut down) => match r {
                Ok(n) if n > 0 => if cw.write_all(&down[..n]).await.is_err() { return },
                _ => return,
            },
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}
