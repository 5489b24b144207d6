//! The gateway process: the relay ([`kakehashi_relay::Relay`]) and, around
//! it, what the configuration turns on — the store, the `/metrics` listener,
//! the web portal, the signed audit checkpoints and syslog forwarding — with
//! one shutdown order: stop accepting, let sessions finish for the grace
//! period, sign a last checkpoint, and forward it before exiting.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kakehashi_relay::{BoundAddrs, Relay, Shared};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;

/// A gateway with every listener bound, ready to serve.
pub struct Gateway {
    relay: Relay,
    addrs: BoundAddrs,
    store: Option<kakehashi_store::Store>,
    admin: Option<TcpListener>,
    portal: Option<(
        TcpListener,
        kakehashi_portal::PortalState,
        Option<Arc<rustls::ServerConfig>>,
    )>,
    /// Signs the audit chain head (with a `[store]`).
    checkpointer: Option<Arc<crate::checkpoint::Checkpointer>>,
    syslog: Option<crate::syslog::SyslogConfig>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Open the store, load certificates and keys, and bind every
    /// configured listener. Errors here (bad files, ports in use, a store
    /// that cannot be opened) happen before anything serves.
    pub async fn bind(cfg: Config) -> anyhow::Result<Self> {
        if let Some(file) = &cfg.relay.policy_file {
            if !file.exists() {
                anyhow::bail!(
                    "ポリシーファイル {f} がありません。次のコマンドで作成してください / [policy] file {f} does not exist. Create it with the shipped default policy:\n  kakehashi-gateway policy default > {f}\n(or export the policy in force: kakehashi-gateway --config … policy export > {f}), or remove the `file` key from [policy] to start with the store's policy (the shipped default on a first start)",
                    f = file.display()
                );
            }
        }
        let store = match &cfg.store_url {
            Some(url) => Some(
                kakehashi_store::Store::open(url.expose())
                    .await
                    .with_context(|| format!("cannot open the store {url}"))?
                    // On PostgreSQL, logins and sessions do not wait on the
                    // audit chain's head; `cluster::seal` seals their records.
                    .seal_later(true),
            ),
            None => None,
        };
        // The audit checkpoint key is loaded (or created) before anything serves.
        let checkpointer = match &store {
            Some(store) => Some(Arc::new(crate::checkpoint::Checkpointer::new(
                cfg.checkpoints.clone(),
                &cfg.relay.name,
                store.clone(),
            )?)),
            None => None,
        };
        let admin = match cfg.admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot bind admin listener {a}"))?,
            ),
            None => None,
        };
        let portal_listener = match (&cfg.portal, &store) {
            (Some(p), Some(_)) => Some(
                TcpListener::bind(p.listen)
                    .await
                    .with_context(|| format!("cannot bind the portal {}", p.listen))?,
            ),
            _ => None,
        };
        let relay = Relay::bind(cfg.relay.clone(), store.clone()).await?;
        let mut addrs = relay.addrs();
        addrs.admin = admin.as_ref().map(TcpListener::local_addr).transpose()?;
        let portal = match (portal_listener, &cfg.portal, &store) {
            (Some(l), Some(p), Some(store)) => {
                addrs.portal = Some(l.local_addr()?);
                let state =
                    kakehashi_portal::PortalState::new(p, store.clone(), Some(relay.handle()))?;
                let tls = if p.insecure_http {
                    None
                } else {
                    kakehashi_transport::keyfile::check_key_file(&p.key)?;
                    Some(kakehashi_portal::tls_config(p).with_context(|| {
                        format!("the portal's certificate {}", p.cert.display())
                    })?)
                };
                Some((l, state, tls))
            }
            _ => None,
        };
        Ok(Self {
            relay,
            addrs,
            store,
            admin,
            portal,
            checkpointer,
            syslog: cfg.syslog,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// A handle on the relay's shared state (for the demo and tests).
    pub fn shared(&self) -> Arc<Shared> {
        self.relay.shared()
    }

    /// Serve until `shutdown` is cancelled; then the relay stops accepting
    /// and gives live sessions the grace period, the last audit checkpoint
    /// is signed, and syslog forwarding gets it out before the process ends.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let s = self.relay.shared();
        // One shutdown for every task: the relay drains it when `shutdown`
        // comes, and whatever runs on it stops in the same order.
        let sd = s.shutdown();
        if let Some(cp) = &self.checkpointer {
            sd.spawn(cp.clone().run(sd.drain_token()));
        }
        // Syslog forwarding outlives the other tasks: it stops after the
        // final audit checkpoint, so the log server gets that one too.
        let audit_stop = CancellationToken::new();
        let mut syslog_task = None;
        if let (Some(sc), Some(store)) = (&self.syslog, &self.store) {
            // From the head as it is before anything is served.
            let after = store.audit_head().await.ok().map(|(seq, _)| seq);
            let origin = crate::syslog::Origin::this_process(
                &s.cfg().name,
                s.cfg().identity.utc_offset_secs,
            );
            syslog_task = Some(tokio::spawn(crate::syslog::run(
                store.clone(),
                sc.clone(),
                origin,
                after,
                s.metrics.syslog_dropped.clone(),
                audit_stop.clone(),
            )));
        }
        if let Some(l) = self.admin {
            let metrics = {
                let s = s.clone();
                move || s.metrics.render()
            };
            sd.spawn(crate::metrics_listener::serve(metrics, sd.clone(), l));
        }
        if let Some((l, state, tls)) = self.portal {
            sd.spawn(kakehashi_portal::serve(state, l, tls, sd.clone()));
        }
        let result = self.relay.serve(shutdown).await;
        if let Some(cp) = &self.checkpointer {
            if let Err(e) = cp.checkpoint("shutdown").await {
                warn!(error = %format!("{e:#}"), "Cannot sign the audit checkpoint on shutdown");
            }
        }
        audit_stop.cancel();
        if let Some(t) = syslog_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        info!("Gateway stopped");
        result
    }
}
