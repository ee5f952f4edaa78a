//! Store-backed admin commands: users, MFA states, app passwords, settings
//! and the sign-in log. They write to the same store a running `fedgate
//! serve` reads; the server sees each change through the change feed within
//! a second.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::output::{self, outln};
use super::{AppPasswordCommand, SettingsCommand, SigninsArgs, StoreCopyArgs, UserCommand};
use crate::app_password;
use crate::config::Config;
use crate::model::{AppPassword, AppPasswordName, Clock, MfaState, Secret, SystemClock, Upn, User};
use crate::store::copy::{CopyError, Endpoint};
use crate::store::{AuditFilter, OpenMode, StateLine, Store, StoreAccess, StoreError};

/// Why an admin command failed; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Boxed: a copy's error names two stores and is large.
    #[error(transparent)]
    Copy(Box<CopyError>),
    #[error("store.key_file: {0}")]
    Key(#[from] crate::server_key::KeyError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Credential(#[from] crate::app_password::CredentialError),
    #[error("{0}")]
    Directory(#[from] crate::directory::client::SetupError),
    /// Already reported on standard output.
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Input(_) | CommandError::Store(StoreError::Missing { .. } | StoreError::Exists { .. }) => {
                ExitCode::from(2)
            }
            CommandError::Copy(err) if err.is_input() => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }
}

impl From<CopyError> for CommandError {
    fn from(err: CopyError) -> CommandError {
        CommandError::Copy(Box::new(err))
    }
}

fn input(msg: impl Into<String>) -> CommandError {
    CommandError::Input(msg.into())
}

fn upn(text: &str) -> Result<Upn, CommandError> {
    Upn::parse(text).map_err(|e| input(format!("{text:?}: {e}")))
}

/// Formats unix milliseconds as RFC 3339 UTC, seconds precision.
pub use crate::model::rfc3339 as time;

fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_else(|| "-".into())
}

pub struct Ctx {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub json: bool,
}

impl Ctx {
    pub async fn open(config: Config, json: bool) -> Result<Ctx, CommandError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Never a new store: a mistyped path, or a store removed under a
        // running server, must not turn into an empty one that says "no
        // user".
        let store = crate::store::open_with(&config.store.url, &config.store.access, clock, OpenMode::Existing).await?;
        Ok(Ctx { config, store, json })
    }

    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce()) {
        if self.json {
            // Invariant: the records printed are plain data that serialize.
            outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            human();
        }
    }

    async fn user(&self, text: &str) -> Result<User, CommandError> {
        let upn = upn(text)?;
        match self.store.get_user_by_upn(&upn).await? {
            Some(u) if !u.deleted => Ok(u),
            Some(_) => Err(StoreError::UserDeleted { upn }.into()),
            None => Err(StoreError::UnknownUser { upn }.into()),
        }
    }
}

/// `fedgate store init`: a new store with its schema, and the server key.
pub async fn store_init(config: &Config) -> Result<(), CommandError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = crate::store::open_with(&config.store.url, &config.store.access, clock, OpenMode::New).await?;
    store.close().await;
    crate::server_key::load_or_create(&config.store.key_file)?;
    outln!(
        "created store {} (server key {})",
        crate::store::redact_url(&config.store.url),
        config.store.key_file.display()
    );
    Ok(())
}

/// `fedgate store copy`: every table of one store into an empty one.
pub async fn store_copy(args: &StoreCopyArgs, json: bool) -> Result<(), CommandError> {
    let from_access = StoreAccess {
        password_file: args.from_password_file.clone(),
        ca_file: args.from_ca_file.clone(),
    };
    let to_access = StoreAccess {
        password_file: args.to_password_file.clone(),
        ca_file: args.to_ca_file.clone(),
    };
    let report = crate::store::copy::copy_store(
        Endpoint {
            url: &args.from,
            access: &from_access,
        },
        Endpoint {
            url: &args.to,
            access: &to_access,
        },
        Arc::new(SystemClock),
    )
    .await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(());
    }
    outln!("copied {} to {}", report.from, report.to);
    for (table, rows) in &report.tables {
        outln!("  {table:<16} {rows:>9}");
    }
    outln!("the target keeps its own store id. Every node of it needs this site's [store] key_file and");
    outln!("[portal] secret_key_file: app passwords and TOTP secrets do not work without them.");
    Ok(())
}

fn print_users(users: &[User]) {
    outln!(
        "{:<40} {:<10} {:<9} {:<8} {:<20}",
        "UPN",
        "STATE",
        "SOURCE",
        "ACCOUNT",
        "REGISTERED"
    );
    for u in users {
        outln!(
            "{:<40} {:<10} {:<9} {:<8} {:<20}",
            u.upn.as_str(),
            u.mfa_state.as_str(),
            u.source.as_str(),
            if u.is_active() { "enabled" } else { "disabled" },
            opt_time(u.registered_at)
        );
    }
}

fn print_app_passwords(list: &[AppPassword]) {
    outln!(
        "{:<24} {:<20} {:<20} {:<16} CLIENT",
        "NAME",
        "CREATED",
        "LAST USED",
        "LAST IP"
    );
    for a in list {
        outln!(
            "{:<24} {:<20} {:<20} {:<16} {}",
            a.name,
            time(a.created_at),
            opt_time(a.last_used_at),
            a.last_ip.as_deref().unwrap_or("-"),
            a.last_user_agent.as_deref().unwrap_or("-")
        );
    }
}

pub async fn user(ctx: &Ctx, cmd: UserCommand) -> Result<(), CommandError> {
    match cmd {
        UserCommand::Add {
            upn: name,
            password_stdin,
            state,
        } => {
            let upn = upn(&name)?;
            let hash = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| input(format!("cannot read the password from standard input: {e}")))?;
                let password = Secret::from(text.trim_end_matches(['\r', '\n']));
                if password.expose().is_empty() {
                    return Err(input("the password on standard input is empty"));
                }
                if app_password::is_app_password_shaped(password.expose()) {
                    return Err(input(
                        "this password has the shape of an app password (16 letters, run together or in four groups of four), \
                         which fedgate reserves for generated app passwords: choose another",
                    ));
                }
                Some(
                    tokio::task::spawn_blocking(move || app_password::hash_password(&password))
                        .await
                        .map_err(|e| input(format!("hashing failed: {e}")))??,
                )
            } else {
                None
            };
            let user = ctx.store.create_cloud_user(&upn, state, hash.as_deref()).await?;
            ctx.print(&user, || {
                outln!("created cloud user {} (MFA state {})", user.upn, user.mfa_state);
                if hash.is_none() {
                    outln!("no password set: the user can sign in with app passwords only");
                }
            });
        }
        UserCommand::List { state } => {
            let users = ctx.store.list_users(state).await?;
            ctx.print(&users, || print_users(&users));
        }
        UserCommand::Show { upn } => {
            let user = ctx.user(&upn).await?;
            let app_passwords = ctx.store.list_app_passwords(user.id).await?;
            #[derive(Serialize)]
            struct Shown<'a> {
                #[serde(flatten)]
                user: &'a User,
                app_passwords: &'a [AppPassword],
            }
            ctx.print(
                &Shown {
                    user: &user,
                    app_passwords: &app_passwords,
                },
                || {
                    outln!("upn:            {}", user.upn);
                    outln!("source:         {}", user.source);
                    outln!(
                        "account:        {}",
                        if user.is_active() { "enabled" } else { "disabled" }
                    );
                    outln!("mfa state:      {}", user.mfa_state);
                    outln!("registered:     {}", opt_time(user.registered_at));
                    outln!("created:        {}", time(user.created_at));
                    outln!(
                        "password:       {}",
                        if user.password_hash.is_some() { "set" } else { "-" }
                    );
                    outln!("app passwords:  {}", app_passwords.len());
                    if !app_passwords.is_empty() {
                        print_app_passwords(&app_passwords);
                    }
                },
            );
        }
        UserCommand::SetState { state, csv, upns } => {
            let lines: Vec<StateLine> = match (state, csv) {
                (Some(state), None) => {
                    if upns.is_empty() {
                        return Err(input("name at least one UPN, or use --csv FILE"));
                    }
                    upns.iter()
                        .enumerate()
                        .map(|(i, u)| StateLine {
                            line: i + 1,
                            upn: u.clone(),
                            state: state.as_str().to_string(),
                        })
                        .collect()
                }
                (None, Some(file)) => {
                    if !upns.is_empty() {
                        return Err(input(
                            "--csv takes the users from the file: name no UPN on the command line",
                        ));
                    }
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| input(format!("cannot read {}: {e}", file.display())))?;
                    StateLine::parse_csv(&text)
                }
                _ => return Err(input("give either --state S with UPNs, or --csv FILE")),
            };
            match ctx.store.set_mfa_states(&lines).await {
                Ok(applied) => ctx.print(
                    &serde_json::json!({"changed": applied.changed, "unchanged": applied.unchanged}),
                    || {
                        outln!(
                            "{} user(s) changed, {} already in that state",
                            applied.changed,
                            applied.unchanged
                        )
                    },
                ),
                Err(StoreError::BulkRejected { errors }) => {
                    if ctx.json {
                        let report: Vec<_> = errors
                            .iter()
                            .map(|e| serde_json::json!({"line": e.line, "upn": e.upn, "reason": e.reason}))
                            .collect();
                        outln!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({"applied": false, "errors": report}))
                                .unwrap_or_default()
                        );
                    } else {
                        eprintln!("no change applied; fix these lines and run again:");
                        for e in &errors {
                            eprintln!("  line {}: {}: {}", e.line, e.upn, e.reason);
                        }
                    }
                    return Err(input(format!("{} line(s) refused", errors.len())));
                }
                Err(other) => return Err(other.into()),
            }
        }
        UserCommand::RevokeAppPasswords { upn } => {
            let user = ctx.user(&upn).await?;
            let n = ctx.store.revoke_app_passwords(user.id).await?;
            ctx.print(&serde_json::json!({"upn": user.upn, "revoked": n}), || {
                outln!("revoked {n} app password(s) of {}", user.upn)
            });
        }
        UserCommand::Disable { upn: name } => {
            let user = ctx.store.set_enabled(&upn(&name)?, false).await?;
            ctx.print(&user, || outln!("{} disabled: every sign-in is refused", user.upn));
        }
        UserCommand::Enable { upn: name } => {
            let user = ctx.store.set_enabled(&upn(&name)?, true).await?;
            ctx.print(&user, || outln!("{} enabled", user.upn));
        }
        UserCommand::RequireRegistration { upn } => {
            let user = ctx.store.require_registration(&self::upn(&upn)?).await?;
            ctx.print(&user, || {
                outln!("{} must register their second factor again at next sign-in", user.upn)
            });
        }
    }
    Ok(())
}

pub async fn app_password_cmd(ctx: &Ctx, cmd: AppPasswordCommand) -> Result<(), CommandError> {
    match cmd {
        AppPasswordCommand::Create { upn, name } => {
            let user = ctx.user(&upn).await?;
            let name = AppPasswordName::parse(&name).map_err(|e| input(format!("--name: {e}")))?;
            let key = crate::server_key::load_or_create(&ctx.config.store.key_file)?;
            let (created, shown) =
                app_password::issue(&*ctx.store, &key, user.id, name)
                    .await
                    .map_err(|e| match e {
                        app_password::CredentialError::Store(e) => CommandError::Store(e),
                        other => CommandError::Credential(other),
                    })?;
            // The secret goes out first, on its own line, and is flushed:
            // if it cannot be written (the reader of a pipe has gone), the
            // password is deleted again, since nobody will ever see it.
            if ctx.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "upn": user.upn,
                        "name": created.name,
                        "created_at": created.created_at,
                        "password": shown.expose(),
                    }))
                    .unwrap_or_default()
                );
            } else {
                outln!("{}", shown.expose());
            }
            if let Some((_, err)) = output::failure() {
                let undone = match ctx.store.delete_app_password(user.id, &created.name).await {
                    Ok(()) => "it was deleted again: create it once more".to_owned(),
                    Err(del) => format!(
                        "deleting it failed too ({del}): delete it with `fedgate app-password delete {} {:?}`",
                        user.upn, created.name
                    ),
                };
                return Err(CommandError::Failed(format!(
                    "cannot write the app password to standard output ({err}); {undone}"
                )));
            }
            if !ctx.json {
                outln!();
                outln!(
                    "app password {:?} for {}, shown once above. Enter it in the device's",
                    created.name,
                    user.upn
                );
                outln!("mail or calendar app instead of the account password; one app password per device.");
            }
        }
        AppPasswordCommand::List { upn } => {
            let user = ctx.user(&upn).await?;
            let list = ctx.store.list_app_passwords(user.id).await?;
            ctx.print(&list, || print_app_passwords(&list));
        }
        AppPasswordCommand::Delete { upn, name } => {
            let user = ctx.user(&upn).await?;
            ctx.store.delete_app_password(user.id, &name).await?;
            ctx.print(&serde_json::json!({"upn": user.upn, "deleted": name}), || {
                outln!("deleted app password {name:?} of {}", user.upn)
            });
        }
    }
    Ok(())
}

pub async fn settings(ctx: &Ctx, cmd: SettingsCommand) -> Result<(), CommandError> {
    let settings = match cmd {
        SettingsCommand::Show => ctx.store.get_settings().await?,
        SettingsCommand::Set { name, value } => match name.as_str() {
            "allow-app-passwords" | "allow_app_passwords" => {
                let allow = match value.to_ascii_lowercase().as_str() {
                    "true" | "on" | "yes" => true,
                    "false" | "off" | "no" => false,
                    other => {
                        return Err(input(format!(
                            "allow-app-passwords: expected true or false, got {other:?}"
                        )))
                    }
                };
                ctx.store.set_allow_app_passwords(allow).await?
            }
            other => return Err(input(format!("unknown setting {other:?} (known: allow-app-passwords)"))),
        },
    };
    ctx.print(&settings, || {
        outln!("allow-app-passwords  {}", settings.allow_app_passwords)
    });
    Ok(())
}

pub async fn signins(ctx: &Ctx, args: SigninsArgs) -> Result<(), CommandError> {
    let user = args.user.as_deref().map(upn).transpose()?;
    let since = match args.since.as_deref() {
        None => None,
        Some(text) => {
            let d = humantime::parse_duration(text)
                .map_err(|_| input(format!("--since: expected a duration such as 1h or 30m, got {text:?}")))?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            Some(now.saturating_sub(d).as_millis() as i64)
        }
    };
    let success = match args.result.as_deref() {
        None => None,
        Some("success") => Some(true),
        Some("failure") => Some(false),
        Some(other) => return Err(input(format!("--result: expected success or failure, got {other:?}"))),
    };
    let records = ctx
        .store
        .query_audit(&AuditFilter {
            user,
            since,
            success,
            limit: args.limit,
        })
        .await?;
    ctx.print(&records, || {
        outln!(
            "{:<20} {:<32} {:<8} {:<14} {:<28} {:<16} {:>5} ROUTE",
            "TIME",
            "USER",
            "RESULT",
            "CREDENTIAL",
            "REASON",
            "CLIENT",
            "COUNT"
        );
        for r in &records {
            outln!(
                "{:<20} {:<32} {:<8} {:<14} {:<28} {:<16} {:>5} {}",
                time(r.at),
                r.upn_given,
                if r.success { "success" } else { "failure" },
                match &r.app_password_name {
                    Some(n) => format!("app:{n}"),
                    None => r.credential.as_str().to_string(),
                },
                r.reason.as_str(),
                r.client_ip,
                r.count,
                r.route
            );
        }
    });
    Ok(())
}

/// Parses an MFA state for clap.
pub fn parse_state(s: &str) -> Result<MfaState, String> {
    s.parse::<MfaState>().map_err(|e| e.to_string())
}

pub async fn sync(ctx: &Ctx, cmd: crate::cli::SyncCommand) -> Result<(), CommandError> {
    use crate::sync::{PassKind, Syncer};
    let (Some(directory), Some(sync)) = (&ctx.config.directory, &ctx.config.sync) else {
        return Err(input(
            "no directory sync configured: add [directory] (with bind_dn) to the config; [sync] enabled = false turns it off",
        ));
    };
    match cmd {
        crate::cli::SyncCommand::Run { force, incremental } => {
            let ldap = Arc::new(crate::directory::LdapDirectory::new(directory.clone())?);
            let syncer = Syncer::new(ldap, Arc::clone(&ctx.store), sync.clone(), Arc::new(SystemClock));
            let kind = if incremental {
                PassKind::Incremental
            } else {
                PassKind::Full
            };
            let pass = tokio::select! {
                pass = syncer.run(kind, force, true) => pass.map_err(|busy| CommandError::Failed(busy.to_string()))?,
                _ = tokio::signal::ctrl_c() => {
                    // Whole batches stay applied; the next pass redoes the
                    // rest. The lease is handed back so it need not wait.
                    syncer.release().await;
                    return Err(CommandError::Failed("interrupted".into()));
                }
            };
            ctx.print(&pass, || print_pass(&pass));
            if pass.outcome == "completed" {
                Ok(())
            } else {
                Err(CommandError::Failed(format!(
                    "sync pass {}: {}",
                    pass.outcome,
                    pass.message.as_deref().unwrap_or("see the log")
                )))
            }
        }
        crate::cli::SyncCommand::Status => {
            let (incremental, full) = ctx.store.last_sync_passes().await?;
            let now = SystemClock.now_ms();
            let last_completed = ctx.store.last_completed_sync_at().await?;
            let leader = ctx.store.sync_lead().await?.filter(|lead| lead.until > now);
            let status = SyncStatus {
                leader,
                lag_seconds: last_completed.map(|at| (now - at).max(0) / 1000),
                incremental,
                full,
            };
            ctx.print(&status, || {
                for (name, pass) in [("incremental", &status.incremental), ("full", &status.full)] {
                    match pass {
                        None => outln!("{name:<12} never run"),
                        Some(pass) => print_pass(pass),
                    }
                }
                match status.lag_seconds {
                    Some(lag) => outln!("lag          {lag} s since the last completed pass"),
                    None => outln!("lag          no pass has completed yet"),
                }
                match &status.leader {
                    Some(lead) => outln!("leader       {} since {}", lead.node, time(lead.since)),
                    None => outln!("leader       none (no fedgate serve with [sync] is running)"),
                }
            });
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct SyncStatus {
    /// The node scheduling passes, unless its lead has run out.
    leader: Option<crate::store::SyncLead>,
    incremental: Option<crate::store::SyncPass>,
    full: Option<crate::store::SyncPass>,
    lag_seconds: Option<i64>,
}

fn print_pass(pass: &crate::store::SyncPass) {
    outln!(
        "{:<12} {} at {} in {} ms: seen {}, created {}, updated {}, disabled {}, enabled {}, deleted {}, errors {}{}",
        pass.kind,
        pass.outcome,
        time(pass.started_at),
        pass.duration_ms,
        pass.seen,
        pass.created,
        pass.updated,
        pass.disabled,
        pass.enabled,
        pass.deleted,
        pass.errors,
        pass.server.as_deref().map(|s| format!(" ({s})")).unwrap_or_default(),
    );
    if let Some(message) = &pass.message {
        outln!("{:<12} {message}", "");
    }
}
