//! `certfleet-coordinator`: thin binary. Parses arguments, loads config, starts tracing,
//! then calls the library.

use anyhow::Context;
use certfleet_coordinator::cli::Printed;
use certfleet_coordinator::config::{StoreBackend, StoreConfig};
use certfleet_coordinator::{cli, config::Config, fleet_ca, node};
use certfleet_proto::v1 as pb;
use certfleet_shared::clock::{Clock, SystemClock};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "certfleet-coordinator",
    version,
    about = "certfleet coordinator: ACME accounts, fleet CA, issuance, admin API"
)]
struct Args {
    /// Config file (TOML).
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_CONFIG",
        default_value = "/etc/certfleet/coordinator.toml"
    )]
    config: PathBuf,
    /// Coordinator URL for operator commands (default: from [server] listen).
    #[arg(long, global = true, env = "CERTFLEET_COORDINATOR")]
    coordinator: Option<String>,
    /// Operator credential for operator commands: a directory from `operators add --out`
    /// (default: the state directory's admin credential).
    #[arg(long, global = true, env = "CERTFLEET_CREDENTIAL")]
    credential: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "CERTFLEET_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    /// Print JSON instead of text: one document (`audit`: JSON Lines, one record a line).
    /// Every command that prints takes it, before or after the subcommand.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the state directory: store, fleet CA, server certificate, operator credential.
    Init,
    /// Print the fleet CA fingerprint agents pin with --ca-sha256.
    CaFingerprint,
    /// Several coordinators of one fleet: export the fleet CA for another node, or join
    /// from such a bundle.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Run the coordinator.
    Serve,
    /// Join tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Join tokens: list (default) or revoke.
    Tokens {
        #[command(subcommand)]
        cmd: Option<TokensCmd>,
    },
    /// One screen: hosts, certificates by state, soonest expiry, anything at risk or failing.
    ///
    /// Exit status: 0 all well; 3 something needs attention (a certificate at risk, expired,
    /// failing or held back by conflict/refused, a coordinator node dead, the store
    /// unreachable: listed under "health", and as "problems" in --json); 1 the coordinator
    /// could not be asked (unreachable, refused, bad config); 2 a usage error.
    Status,
    /// List hosts, or remove one.
    Hosts {
        #[command(subcommand)]
        cmd: Option<HostsCmd>,
    },
    /// Query the audit trail (JSON Lines with --json, for export into a SIEM).
    Audit {
        #[command(subcommand)]
        cmd: Option<AuditCmd>,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// An identifier: an IP address or a CIDR block.
        #[arg(long)]
        ip: Option<String>,
        /// A DNS name, or '*.zone' for every name below the zone.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        /// Event kind (repeatable), e.g. certificate_issued, host_enrolled.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// From this time (RFC 3339) or this long ago (24h, 1h30m, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// At most this many records (0: every matching one, fetched a page at a time).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// The store itself: `migrate` and `restore` with the coordinator stopped, `backup`
    /// while it serves.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Named operators and their roles: add, renew your own credential, list, revoke.
    Operators {
        #[command(subcommand)]
        cmd: Option<OperatorsCmd>,
    },
    /// The read-only web view ([web] listen).
    Web {
        #[command(subcommand)]
        cmd: WebCmd,
    },
    /// List certificates, or act on them.
    Certs {
        #[command(subcommand)]
        cmd: Option<CertsCmd>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Write the fleet CA (certificate and private key) to FILE (0600) for `node join` on
    /// another coordinator. Move it like a secret and delete it after the join.
    Export {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make this node a coordinator of the fleet in BUNDLE: the fleet CA into the state
    /// directory, and this node's own server certificate (for [server] names and ips) and
    /// operator credential signed by it. Refuses a state directory of another fleet.
    Join {
        #[arg(long)]
        bundle: PathBuf,
    },
}

#[derive(Subcommand)]
enum WebCmd {
    /// On the coordinator's machine: print a login link for the web view that works once
    /// (a ticket in the state directory; the coordinator checks the operator when the link
    /// is opened, then a session cookie takes over).
    Login {
        /// The operator to log in as (default: the state directory's credential).
        #[arg(long)]
        operator: Option<String>,
        /// How long the link can be opened, 10s to 1h.
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum OperatorsCmd {
    /// List operators (role, state, serial, who added them).
    List,
    /// Issue a personal credential: the key is made here (0600 in DIR), the coordinator
    /// signs it. Admins only.
    Add {
        name: String,
        /// admin (every command) or viewer (read-only commands).
        #[arg(long)]
        role: String,
        /// How long it is valid, e.g. 30d, 12h, 1d12h (10s to 90d).
        #[arg(long, default_value = "30d", value_parser = certfleet_shared::timefmt::parse_duration_secs)]
        lifetime: u64,
        /// Directory for operator.pem, operator.key and fleet-ca.pem (made 0700).
        #[arg(long)]
        out: PathBuf,
        /// Also write operator.p12 (key, certificate, fleet CA) for a browser to log in
        /// to the web view, and its password in operator.p12.password (both 0600).
        #[arg(long)]
        p12: bool,
    },
    /// Renew the credential in use (--credential, or the state directory's) while it is
    /// valid: new key, same name and role; the old one stops working.
    Renew,
    /// Revoke an operator: every coordinator refuses its calls from the next one on.
    Revoke { name: String },
    /// Offline, on the coordinator: a new credential for the state directory's admin
    /// (when every admin credential expired); adopted at the coordinator's next start.
    Bootstrap,
}

#[derive(Subcommand)]
enum HostsCmd {
    /// Remove a host: revoke its certificates (cessationOfOperation), forget it, refuse its
    /// identity from now on.
    Remove {
        host: String,
        /// Keep its certificates valid at the CA (only forget them here).
        #[arg(long)]
        no_revoke: bool,
    },
    /// Free an address the host holds (it moved to another machine): a host waiting for it
    /// in `conflict` gets its certificate at once.
    ReleaseIp { host: String, ip: String },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// List tokens (ids, state, expiry, who used them).
    List,
    /// Create a join token and print it (same as `token create`).
    Create(NewTokenArgs),
    /// Revoke a token by its id (at least 8 hex digits, from `tokens list`).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy this coordinator's sled store (audit trail included) into an empty PostgreSQL
    /// database and verify the copy; then set `[store] backend = "postgres"`.
    Migrate {
        /// postgres://user@host:port/db (a URL with a password: use --to-file).
        #[arg(long, required_unless_present = "to_file", conflicts_with = "to_file")]
        to: Option<String>,
        /// A file (0600) holding the URL.
        #[arg(long)]
        to_file: Option<PathBuf>,
        /// TLS to the database: disable, require or verify-full.
        #[arg(long, default_value = "verify-full")]
        tls: String,
        /// Roots for verify-full (PEM); default the system's.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Write a consistent snapshot of the running coordinator's sled store (audit trail,
    /// ACME accounts and the fleet CA included) to FILE, 0600. PostgreSQL: use pg_dump.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the (empty or new) state directory from a `store backup` file, with the
    /// coordinator stopped; the audit chain is verified after the restore.
    Restore {
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain and report the first broken link (exit 3 when broken).
    Verify,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Revoke at the CA; a replacement is issued at once.
    Revoke {
        id: String,
        /// unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation,
        /// privilegeWithdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Renew now, whether due or not.
    Renew {
        /// Certificate ids (from `certs`).
        ids: Vec<String>,
        /// Every certificate of this host.
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a join token and print it.
    Create(NewTokenArgs),
}

/// A join token's lifetime, uses and constraints.
#[derive(clap::Args)]
struct NewTokenArgs {
    /// Lifetime, e.g. 30m, 1h30m, 7d (a bare number is seconds).
    #[arg(long, default_value = "1h", value_parser = certfleet_shared::timefmt::parse_duration_secs)]
    ttl: u64,
    /// How many enrollments it allows.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// Source addresses allowed to enroll with it: a CIDR block or one address
    /// (repeatable; default any).
    #[arg(long = "cidr")]
    cidrs: Vec<String>,
    /// A label the host gets, key=value (repeatable). With any --label the token fixes the
    /// host's labels: it gets exactly these, and an agent asking for another label or
    /// value is refused.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Fix the host's labels to none: an agent asking for any label is refused.
    #[arg(long, conflicts_with = "labels")]
    no_labels: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: use key=value"))
}

fn main() -> std::process::ExitCode {
    // `Args::parse()`, plus the hidden `generate-assets` (completions, man pages).
    let args = certfleet_shared::cli_assets::parse::<Args>();
    if let Err(e) = certfleet_shared::daemon::init_tracing(
        &args.log_format,
        "info,h2=warn,hyper=warn,tower=warn,sled=warn",
    ) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                certfleet_shared::daemon::error_message(e.chain())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let now = SystemClock.now_unix();
    let json = args.json;
    let connect = || {
        cli::connect(
            &config,
            args.coordinator.as_deref(),
            args.credential.as_deref(),
        )
    };
    let out = |p: Printed| print!("{}", p.render(json));
    match args.cmd {
        Cmd::Init => {
            let dir = fleet_ca::StateDir::new(&config.state_dir);
            let fp = fleet_ca::init(
                &dir,
                &config.server.names,
                &config.server.ips,
                config.server.certificate_lifetime_secs as i64,
                now,
            )?;
            let url = config.local_url();
            let enroll = format!(
                "certfleet-agent enroll --coordinator {url} --token <token> --ca-sha256 {fp}"
            );
            out(Printed::new(
                format!(
                    "initialised {}\nagents enroll with: {enroll}\nca-sha256: {fp}",
                    config.state_dir.display()
                ),
                json!({"state_dir": config.state_dir, "ca_sha256": fp, "coordinator": url,
                       "enroll": enroll, "admin_credential": dir.admin_cert()}),
            ));
        }
        Cmd::Node {
            cmd: NodeCmd::Export { out: file },
        } => {
            let dir = fleet_ca::StateDir::new(&config.state_dir);
            let b = node::export(&dir, &file, now)?;
            out(Printed::new(
                format!(
                    "wrote {} (fleet CA {}, mode 0600)\nit holds the fleet CA's private key: copy it to the new node like a secret (scp, not email or tickets), run `certfleet-coordinator node join --bundle FILE` there, then delete every copy",
                    file.display(),
                    b.ca_sha256
                ),
                json!({"bundle": file, "ca_sha256": b.ca_sha256, "mode": "0600"}),
            ));
        }
        Cmd::Node {
            cmd: NodeCmd::Join { bundle },
        } => {
            let dir = fleet_ca::StateDir::new(&config.state_dir);
            let b = node::read_bundle(&bundle)?;
            let lifetime = config.server.certificate_lifetime_secs as i64;
            let names: Vec<String> = config
                .server
                .names
                .iter()
                .cloned()
                .chain(config.server.ips.iter().map(ToString::to_string))
                .collect();
            let joined = node::join(
                &dir,
                &b,
                &config.server.names,
                &config.server.ips,
                lifetime,
                now,
            )?;
            let first = match joined {
                node::Joined::Joined { .. } => format!(
                    "joined the fleet in {}: fleet CA written, own server certificate for {} made",
                    config.state_dir.display(),
                    names.join(", ")
                ),
                node::Joined::AlreadyMember { .. } => format!(
                    "{} already holds this fleet CA and its own credentials; nothing changed",
                    config.state_dir.display()
                ),
            };
            out(Printed::new(
                format!(
                    "{first}\nnow delete {} (it holds the fleet CA's private key)\nagents reach this node at {}\nca-sha256: {}",
                    bundle.display(),
                    config.local_url(),
                    b.ca_sha256
                ),
                json!({"state_dir": config.state_dir,
                       "joined": matches!(joined, node::Joined::Joined { .. }),
                       "server_names": names, "coordinator": config.local_url(),
                       "ca_sha256": b.ca_sha256, "delete": bundle}),
            ));
        }
        Cmd::CaFingerprint => {
            let fp = fleet_ca::StateDir::new(&config.state_dir).ca_fingerprint()?;
            out(Printed::new(fp.clone(), json!({"ca_sha256": fp})));
        }
        Cmd::Serve => {
            config.check_files(&args.config)?;
            for w in config.warnings() {
                tracing::warn!("{w}");
            }
            // From here on a SIGHUP asks for a reload instead of ending the process.
            let mut hangups = certfleet_shared::daemon::Hangups::new();
            let deps = certfleet_coordinator::Deps::open(&config).await?;
            let shutdown = CancellationToken::new();
            // One reload waiting is enough: SIGHUPs while one waits are the same request.
            let (reload, requests) = tokio::sync::mpsc::channel(1);
            let reloads = certfleet_coordinator::reload::Reloads {
                path: args.config.clone(),
                requests,
            };
            let serve = certfleet_coordinator::serve_with_reload(
                config.clone(),
                deps,
                shutdown.clone(),
                Some(reloads),
            );
            tokio::pin!(serve);
            // No task for the signals: they are awaited here, beside the daemon.
            let stop = certfleet_shared::daemon::wait_for_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    r = &mut serve => return r,
                    _ = &mut stop => {
                        tracing::info!("stopping");
                        certfleet_shared::daemon::notify_systemd(certfleet_shared::daemon::Notify::Stopping);
                        shutdown.cancel();
                        break;
                    }
                    _ = hangups.recv() => {
                        tracing::info!(config = %args.config.display(), "SIGHUP: reloading the configuration");
                        let _ = reload.try_send(());
                    }
                }
            }
            serve.await?;
        }
        Cmd::Store {
            cmd:
                StoreCmd::Migrate {
                    to,
                    to_file,
                    tls,
                    ca_file,
                },
        } => {
            if let Some(url) = &to {
                let has_password = url
                    .parse::<tokio_postgres::Config>()
                    .is_ok_and(|c| c.get_password().is_some());
                anyhow::ensure!(
                    !has_password,
                    "--to holds a password, which every user can see in the process list; \
                     put the URL in a file only you can read (chmod 600) and pass --to-file"
                );
            }
            let target = StoreConfig {
                backend: StoreBackend::Postgres,
                url: to,
                url_file: to_file,
                tls: toml::Value::String(tls).try_into().map_err(|_| {
                    anyhow::anyhow!("--tls must be disable, require or verify-full")
                })?,
                ca_file,
                ..StoreConfig::default()
            };
            let opts = target.pg_options().map_err(anyhow::Error::msg)?;
            let from = config.clone();
            let report = tokio::task::spawn_blocking(move || {
                certfleet_coordinator::store::migrate::sled_to_postgres_at(&from, opts)
            })
            .await??;
            out(Printed::new(
                format!("copied {report} (audit chain verified on the copy)\nnow set [store] backend = \"postgres\" (with url_file or url_env) and start the coordinator"),
                json!({"copied": {"accounts": report.accounts, "tokens": report.tokens,
                       "hosts": report.hosts, "certificates": report.certs,
                       "ip_holders": report.ip_holders, "rate_limit_budgets": report.budgets,
                       "operators": report.operators, "audit_records": report.audit_records},
                       "verified": true}),
            ));
        }
        Cmd::Store {
            cmd: StoreCmd::Backup { out: file },
        } => {
            let mut client = cli::connect(
                &config,
                args.coordinator.as_deref(),
                args.credential.as_deref(),
            )
            .await?;
            let started = std::time::Instant::now();
            let counts = cli::backup::backup(&mut client, &file).await?;
            out(Printed::new(
                format!(
                    "backup written to {} in {:.1} s (checked): {counts}",
                    file.display(),
                    started.elapsed().as_secs_f64()
                ),
                json!({"file": file, "seconds": started.elapsed().as_secs_f64(),
                       "contents": counts.to_string(), "checked": true}),
            ));
        }
        Cmd::Store {
            cmd: StoreCmd::Restore { from },
        } => {
            anyhow::ensure!(
                config.store.backend == StoreBackend::Sled,
                "[store] backend is postgres: restore a PostgreSQL store with pg_restore / psql \
                 (README, \"Store\"); `store restore` makes a sled state directory"
            );
            let state_dir = config.state_dir.clone();
            let counts = tokio::task::spawn_blocking(move || {
                certfleet_coordinator::store::backup::restore(&config, &from, now)
            })
            .await??;
            out(Printed::new(
                format!(
                    "restored into {}: {counts} (audit chain verified)\na new server certificate and admin credential (admin.pem) were made; start the coordinator",
                    state_dir.display()
                ),
                json!({"state_dir": state_dir, "contents": counts.to_string(), "audit_verified": true}),
            ));
        }
        Cmd::Token {
            cmd: TokenCmd::Create(new),
        }
        | Cmd::Tokens {
            cmd: Some(TokensCmd::Create(new)),
        } => {
            let req = pb::CreateTokenRequest {
                ttl_seconds: new.ttl,
                uses: new.uses,
                cidrs: new.cidrs,
                fix_labels: new.no_labels || !new.labels.is_empty(),
                labels: new.labels.into_iter().collect(),
            };
            let t = cli::token_create(&mut connect().await?, req).await?;
            // Text: the token alone (scripts take it as it is).
            out(Printed::new(
                t.token.clone(),
                json!({"token": t.token, "expires": cli::opt_time(t.expires_unix), "uses": new.uses}),
            ));
        }
        Cmd::Tokens {
            cmd: None | Some(TokensCmd::List),
        } => print!("{}", cli::tokens(&mut connect().await?, json, now).await?),
        Cmd::Tokens {
            cmd: Some(TokensCmd::Revoke { id }),
        } => {
            let id = cli::token_revoke(&mut connect().await?, id).await?;
            out(Printed::new(
                format!("revoked token {id}"),
                json!({"revoked": id}),
            ));
        }
        Cmd::Status => {
            let (text, code) = cli::status(&mut connect().await?, json, now).await?;
            print!("{text}");
            if code != cli::health::EXIT_OK {
                std::process::exit(code.into());
            }
        }
        Cmd::Hosts {
            cmd: Some(HostsCmd::Remove { host, no_revoke }),
        } => {
            let revoked = cli::host_remove(&mut connect().await?, host.clone(), no_revoke).await?;
            out(Printed::new(
                format!(
                    "removed host {host}; revoked {}",
                    if revoked.is_empty() {
                        "nothing".into()
                    } else {
                        revoked.join(", ")
                    }
                ),
                json!({"removed": host, "revoked_serials": revoked}),
            ));
        }
        Cmd::Hosts {
            cmd: Some(HostsCmd::ReleaseIp { host, ip }),
        } => {
            let rechecked =
                cli::host_release_ip(&mut connect().await?, host.clone(), ip.clone()).await?;
            out(Printed::new(
                format!(
                    "released {ip} from host {host}; {}",
                    if rechecked.is_empty() {
                        "no other host claims it".into()
                    } else {
                        format!("looked again at {}", rechecked.join(", "))
                    }
                ),
                json!({"released": ip, "host_id": host, "rechecked_hosts": rechecked}),
            ));
        }
        Cmd::Hosts { cmd: None } => {
            print!("{}", cli::hosts(&mut connect().await?, json, now).await?);
            if json {
                println!();
            }
        }
        Cmd::Certs {
            cmd: Some(CertsCmd::Revoke { id, reason }),
        } => {
            let serial =
                cli::cert_revoke(&mut connect().await?, id.clone(), reason.clone()).await?;
            out(Printed::new(
                format!("revoked serial {serial} ({reason}); a replacement is on its way"),
                json!({"cert_id": id, "revoked_serial": serial, "reason": reason}),
            ));
        }
        Cmd::Certs {
            cmd: Some(CertsCmd::Renew { ids, host }),
        } => {
            if ids.is_empty() && host.is_none() {
                anyhow::bail!("name certificate ids, or --host HOST");
            }
            let scheduled = cli::renew(&mut connect().await?, ids, host).await?;
            out(Printed::new(
                if scheduled.is_empty() {
                    "no renewal scheduled".to_owned()
                } else {
                    scheduled
                        .iter()
                        .map(|id| format!("renewal scheduled: {id}\n"))
                        .collect::<String>()
                },
                json!({"renewal_scheduled": scheduled}),
            ));
        }
        Cmd::Certs { cmd: None } => {
            print!("{}", cli::certs(&mut connect().await?, json, now).await?);
            if json {
                println!();
            }
        }
        Cmd::Audit {
            cmd: Some(AuditCmd::Verify),
            ..
        } => {
            let (ok, printed) = cli::audit_verify(&mut connect().await?).await?;
            out(printed);
            if !ok {
                std::process::exit(3);
            }
        }
        Cmd::Audit {
            cmd: None,
            host,
            ip,
            name,
            serial,
            kinds,
            since,
            until,
            limit,
        } => {
            let filter = cli::AuditFilter {
                host,
                network: ip,
                name,
                serial,
                kinds,
                since: since
                    .map(|s| cli::parse_time(&s, now))
                    .transpose()
                    .context("--since")?,
                until: until
                    .map(|s| cli::parse_time(&s, now))
                    .transpose()
                    .context("--until")?,
                limit,
            };
            print!("{}", cli::audit(&mut connect().await?, filter, json).await?);
        }
        Cmd::Operators { cmd } => match cmd {
            None | Some(OperatorsCmd::List) => {
                print!(
                    "{}",
                    cli::operators::list(&mut connect().await?, json, now).await?
                )
            }
            Some(OperatorsCmd::Add {
                name,
                role,
                lifetime,
                out: dir,
                p12,
            }) => {
                let mut client = connect().await?;
                out(cli::operators::add(&mut client, &name, &role, lifetime, &dir, p12).await?);
            }
            Some(OperatorsCmd::Renew) => {
                let files =
                    cli::credential::CredentialFiles::locate(&config, args.credential.as_deref());
                out(cli::operators::renew(&mut connect().await?, &files).await?);
            }
            Some(OperatorsCmd::Revoke { name }) => {
                out(cli::operators::revoke(&mut connect().await?, &name).await?)
            }
            Some(OperatorsCmd::Bootstrap) => out(cli::operators::bootstrap(&config, now)?),
        },
        Cmd::Web {
            cmd: WebCmd::Login { operator, ttl },
        } => out(certfleet_coordinator::web::cli::login(
            &config,
            operator.as_deref(),
            &ttl,
            now,
        )?),
    }
    Ok(())
}
