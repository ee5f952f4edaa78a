//! Store-backed admin commands: users, MFA states, app passwords, settings
//! and the sign-in log. They write to the same store a running `fedgate
//! serve` reads; the server sees each change through the change feed within
//! a second.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use super::output::{self, outln};
use super::{AppPasswordCommand, PolicyTestArgs, SettingsCommand, SigninsArgs, StoreCopyArgs, UserCommand};
use crate::config::Config;
use crate::manage::{Actor, LimitsRequest, ManageError, Manager, NarrowRequest, SigninQuery, UserQuery};
use crate::model::{AppPassword, AppPasswordLimits, Clock, MfaState, Secret, SystemClock, User};
use crate::store::copy::{CopyError, Endpoint};
use crate::store::{OpenMode, StateLine, Store, StoreAccess, StoreError};

/// Why an admin command failed; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manage(#[from] ManageError),
    /// Boxed: a copy's error names two stores and is large.
    #[error(transparent)]
    Copy(Box<CopyError>),
    #[error("store.key_file: {0}")]
    Key(#[from] crate::server_key::KeyError),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Directory(#[from] crate::directory::client::SetupError),
    /// Already reported on standard output.
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    /// The one place errors become exit codes (README, "Command line"):
    /// 2 for configuration or input errors (an unknown or existing user, a
    /// bad line, a missing store), 1 for runtime failures.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Input(_) | CommandError::Store(StoreError::Missing { .. } | StoreError::Exists { .. }) => {
                ExitCode::from(2)
            }
            CommandError::Manage(err) if err.is_input() => ExitCode::from(2),
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

/// Formats unix milliseconds as RFC 3339 UTC, seconds precision.
pub use crate::model::rfc3339 as time;

fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_else(|| "-".into())
}

pub struct Ctx {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub manager: Manager,
    pub actor: Actor,
    pub json: bool,
}

impl Ctx {
    pub async fn open(config: Config, json: bool) -> Result<Ctx, CommandError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Never a new store: a mistyped path, or a store removed under a
        // running server, must not turn into an empty one that says "no
        // user".
        let store = crate::store::open_with(
            &config.store.url,
            &config.store.access,
            Arc::clone(&clock),
            OpenMode::Existing,
        )
        .await?;
        let manager = Manager::new(Arc::clone(&store), config.store.key_file.clone(), clock)
            .with_routes(crate::manage::credential_routes(&config));
        Ok(Ctx {
            config,
            store,
            manager,
            actor: Actor::cli(),
            json,
        })
    }

    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce()) {
        if self.json {
            // Invariant: the records printed are plain data that serialize.
            outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            human();
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

/// Width of a column: its widest cell, at least its heading, at most `max`
/// (a longer cell overflows its column alone rather than every row).
fn width<'a>(heading: &str, cells: impl Iterator<Item = &'a str>, max: usize) -> usize {
    cells
        .map(|c| c.chars().count())
        .chain(std::iter::once(heading.len()))
        .max()
        .unwrap_or(0)
        .min(max)
}

fn print_users(users: &[User]) {
    let w = width("UPN", users.iter().map(|u| u.upn.as_str()), 64);
    outln!(
        "{:<w$} {:<10} {:<9} {:<8} {:<20}",
        "UPN",
        "STATE",
        "SOURCE",
        "ACCOUNT",
        "REGISTERED"
    );
    for u in users {
        outln!(
            "{:<w$} {:<10} {:<9} {:<8} {:<20}",
            u.upn.as_str(),
            u.mfa_state.as_str(),
            u.source.as_str(),
            if u.is_active() { "enabled" } else { "disabled" },
            opt_time(u.registered_at)
        );
    }
}

fn print_app_passwords(list: &[AppPassword]) {
    let w = width("NAME", list.iter().map(|a| a.name.as_str()), 64);
    outln!(
        "{:<w$} {:<20} {:<20} {:<16} CLIENT",
        "NAME",
        "CREATED",
        "LAST USED",
        "LAST IP"
    );
    for a in list {
        outln!(
            "{:<w$} {:<20} {:<20} {:<16} {}",
            a.name,
            time(a.created_at),
            opt_time(a.last_used_at),
            a.last_ip.as_deref().unwrap_or("-"),
            a.last_user_agent.as_deref().unwrap_or("-")
        );
        if !a.limits.is_unlimited() {
            outln!("{:<w$} limits: {}", "", describe_limits(&a.limits));
        }
    }
}

/// A refusal of an option's value, named as the option is spelled.
fn option_error(err: ManageError) -> CommandError {
    match err {
        ManageError::BadRequest { field, message }
            if ["name", "scope", "expires", "from"].contains(&field.as_str()) =>
        {
            input(format!("--{field}: {message}"))
        }
        other => other.into(),
    }
}

/// An app password's limits in one line: `scope mail, dav; expires ...;
/// from 10.0.0.0/8`, or `no limits`.
fn describe_limits(limits: &AppPasswordLimits) -> String {
    if limits.is_unlimited() {
        return "no limits".to_owned();
    }
    let mut parts = Vec::new();
    if !limits.scope.is_empty() {
        parts.push(format!("scope {}", limits.scope.join(", ")));
    }
    if let Some(at) = limits.expires_at {
        parts.push(format!("expires {}", time(at)));
    }
    if !limits.networks.is_empty() {
        let nets: Vec<String> = limits.networks.iter().map(ToString::to_string).collect();
        parts.push(format!("from {}", nets.join(", ")));
    }
    parts.join("; ")
}

/// A password on standard input, without its line end.
fn read_password() -> Result<Secret, CommandError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| input(format!("cannot read the password from standard input: {e}")))?;
    let password = Secret::from(text.trim_end_matches(['\r', '\n']));
    if password.expose().is_empty() {
        return Err(input("the password on standard input is empty"));
    }
    Ok(password)
}

/// Prints a bulk change's refused lines (on standard error, or as JSON).
fn report_rejected(ctx: &Ctx, err: ManageError) -> CommandError {
    let ManageError::BulkRejected { errors } = err else {
        return err.into();
    };
    if ctx.json {
        let report: Vec<_> = errors
            .iter()
            .map(|e| serde_json::json!({"line": e.line, "upn": e.upn, "reason": e.reason}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"applied": false, "errors": report})).unwrap_or_default()
        );
    } else {
        eprintln!("no change applied; fix these lines and run again:");
        for e in &errors {
            eprintln!("  line {}: {}: {}", e.line, e.upn, e.reason);
        }
    }
    input(format!("{} line(s) refused", errors.len()))
}

fn read_csv(file: &std::path::Path) -> Result<String, CommandError> {
    std::fs::read_to_string(file).map_err(|e| input(format!("cannot read {}: {e}", file.display())))
}

pub async fn user(ctx: &Ctx, cmd: UserCommand) -> Result<(), CommandError> {
    let m = &ctx.manager;
    let actor = &ctx.actor;
    match cmd {
        UserCommand::Add {
            upn,
            password_stdin,
            state,
        } => {
            let password = if password_stdin { Some(read_password()?) } else { None };
            let has_password = password.is_some();
            let user = m.add_user(actor, &upn, state, password).await?;
            ctx.print(&user, || {
                outln!("created cloud user {} (MFA state {})", user.upn, user.mfa_state);
                if !has_password {
                    outln!("no password set: the user can sign in with app passwords only");
                }
            });
        }
        UserCommand::List { state } => {
            let page = m
                .list_users(&UserQuery {
                    state,
                    ..UserQuery::default()
                })
                .await?;
            ctx.print(&page.users, || print_users(&page.users));
        }
        UserCommand::Show { upn } => {
            let detail = m.show_user(&upn).await?;
            ctx.print(&detail, || {
                let (user, app_passwords) = (&detail.user, &detail.app_passwords);
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
                    print_app_passwords(app_passwords);
                }
            });
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
                    StateLine::parse_csv(&read_csv(&file)?)
                }
                _ => return Err(input("give either --state S with UPNs, or --csv FILE")),
            };
            let applied = m.set_states(actor, &lines).await.map_err(|e| report_rejected(ctx, e))?;
            ctx.print(
                &serde_json::json!({"changed": applied.changed, "unchanged": applied.unchanged}),
                || {
                    outln!(
                        "{} user(s) changed, {} already in that state",
                        applied.changed,
                        applied.unchanged
                    )
                },
            );
        }
        UserCommand::Import { csv } => {
            let lines = StateLine::parse_csv(&read_csv(&csv)?);
            if lines.is_empty() {
                return Err(input(format!("{}: no user in the file", csv.display())));
            }
            let created = m
                .import_users(actor, &lines)
                .await
                .map_err(|e| report_rejected(ctx, e))?;
            ctx.print(&created, || {
                outln!(
                    "created {} cloud user(s) without a password (set one with `fedgate user set-password`)",
                    created.len()
                )
            });
        }
        UserCommand::Delete { upn } => {
            let deleted = m.delete_user(actor, &upn).await?;
            ctx.print(&deleted, || {
                outln!(
                    "deleted {} and revoked {} app password(s)",
                    deleted.upn,
                    deleted.revoked
                );
                if deleted.federated {
                    outln!(
                        "{} comes from the directory: if the directory still has them, the next sync pass brings them back (with no app passwords); delete or disable them in the directory",
                        deleted.upn
                    );
                }
            });
        }
        UserCommand::SetPassword { upn, password_stdin } => {
            if !password_stdin {
                return Err(input("give the password on standard input with --password-stdin"));
            }
            let password = read_password()?;
            let user = m.set_password(actor, &upn, Some(password)).await?;
            ctx.print(&user, || outln!("password of {} set", user.upn));
        }
        UserCommand::ClearPassword { upn } => {
            let user = m.set_password(actor, &upn, None).await?;
            ctx.print(&user, || {
                outln!("password of {} cleared: app passwords only from now on", user.upn)
            });
        }
        UserCommand::RevokeAppPasswords { upn } => {
            let revoked = m.revoke_app_passwords(actor, &upn).await?;
            ctx.print(&revoked, || {
                outln!("revoked {} app password(s) of {}", revoked.revoked, revoked.upn)
            });
        }
        UserCommand::Disable { upn } => {
            let user = m.set_enabled(actor, &upn, false).await?;
            ctx.print(&user, || outln!("{} disabled: every sign-in is refused", user.upn));
        }
        UserCommand::Enable { upn } => {
            let user = m.set_enabled(actor, &upn, true).await?;
            ctx.print(&user, || outln!("{} enabled", user.upn));
        }
        UserCommand::RequireRegistration { upn } => {
            let user = m.require_registration(actor, &upn).await?;
            ctx.print(&user, || {
                outln!("{} must register their second factor again at next sign-in", user.upn)
            });
        }
    }
    Ok(())
}

pub async fn app_password_cmd(ctx: &Ctx, cmd: AppPasswordCommand) -> Result<(), CommandError> {
    let m = &ctx.manager;
    match cmd {
        AppPasswordCommand::Create { upn, name, limits } => {
            let requested = LimitsRequest {
                scope: limits.scope.unwrap_or_default(),
                expires: limits.expires,
                from: limits.from.unwrap_or_default(),
            };
            let (created, shown) = m
                .create_app_password(&ctx.actor, &upn, &name, &requested)
                .await
                .map_err(option_error)?;
            // The secret goes out first, on its own line, and is flushed:
            // if it cannot be written (the reader of a pipe has gone), the
            // password is deleted again, since nobody will ever see it.
            if ctx.json {
                outln!("{}", serde_json::to_string_pretty(&created).unwrap_or_default());
            } else {
                outln!("{}", shown.expose());
            }
            let name = &created.app_password.name;
            if let Some((_, err)) = output::failure() {
                let undone = match m.delete_app_password(&ctx.actor, &upn, name).await {
                    Ok(()) => "it was deleted again: create it once more".to_owned(),
                    Err(del) => format!(
                        "deleting it failed too ({del}): delete it with `fedgate app-password delete {} {:?}`",
                        created.upn, name
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
                    name,
                    created.upn
                );
                outln!("mail or calendar app instead of the account password; one app password per device.");
                if !created.app_password.limits.is_unlimited() {
                    outln!("limits: {}", describe_limits(&created.app_password.limits));
                }
            }
        }
        AppPasswordCommand::List { upn } => {
            let list = m.app_passwords(&upn).await?;
            ctx.print(&list, || print_app_passwords(&list));
        }
        AppPasswordCommand::Narrow { upn, name, limits } => {
            let narrow = NarrowRequest {
                scope: limits.scope,
                expires: limits.expires,
                from: limits.from,
            };
            let narrowed = m
                .narrow_app_password(&ctx.actor, &upn, &name, &narrow)
                .await
                .map_err(option_error)?;
            ctx.print(&narrowed, || {
                outln!(
                    "app password {:?}: {}",
                    narrowed.name,
                    describe_limits(&narrowed.limits)
                )
            });
        }
        AppPasswordCommand::Delete { upn, name } => {
            let user = m.user(&upn).await?;
            m.delete_app_password(&ctx.actor, &upn, &name).await?;
            ctx.print(&serde_json::json!({"upn": user.upn, "deleted": name}), || {
                outln!("deleted app password {name:?} of {}", user.upn)
            });
        }
    }
    Ok(())
}

pub async fn settings(ctx: &Ctx, cmd: SettingsCommand) -> Result<(), CommandError> {
    let settings = match cmd {
        SettingsCommand::Show => ctx.manager.settings().await?,
        SettingsCommand::Set { name, value } => match name.as_str() {
            "allow-app-passwords" | "allow_app_passwords" => {
                let allow = crate::manage::parse_bool("allow-app-passwords", &value)?;
                ctx.manager.set_allow_app_passwords(&ctx.actor, allow).await?
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
    let records = ctx
        .manager
        .signins(&SigninQuery {
            user: args.user,
            since: args.since,
            result: args.result,
            limit: Some(args.limit),
        })
        .await
        .map_err(|e| match e {
            ManageError::BadRequest { field, message } => input(format!("--{field}: {message}")),
            other => other.into(),
        })?;
    ctx.print(&records, || {
        let credential = |r: &crate::model::AuditRecord| match &r.app_password_name {
            Some(n) => format!("app:{n}"),
            None => r.credential.as_str().to_string(),
        };
        let credentials: Vec<String> = records.iter().map(credential).collect();
        let wu = width("USER", records.iter().map(|r| r.upn_given.as_str()), 64);
        let wc = width("CREDENTIAL", credentials.iter().map(String::as_str), 72);
        let reasons: Vec<String> = records.iter().map(|r| r.reason_text().into_owned()).collect();
        let wr = width("REASON", reasons.iter().map(String::as_str), 32);
        let wi = width("CLIENT", records.iter().map(|r| r.client_ip.as_str()), 45);
        outln!(
            "{:<20} {:<wu$} {:<8} {:<wc$} {:<wr$} {:<wi$} {:>5} ROUTE",
            "TIME",
            "USER",
            "RESULT",
            "CREDENTIAL",
            "REASON",
            "CLIENT",
            "COUNT"
        );
        for ((r, credential), reason) in records.iter().zip(&credentials).zip(&reasons) {
            outln!(
                "{:<20} {:<wu$} {:<8} {:<wc$} {:<wr$} {:<wi$} {:>5} {}",
                time(r.at),
                r.upn_given,
                if r.success { "success" } else { "failure" },
                credential,
                reason,
                r.client_ip,
                r.count,
                r.route
            );
        }
    });
    Ok(())
}

/// `fedgate admin-events`: the admin event log, newest first.
pub async fn admin_events(ctx: &Ctx, limit: u32) -> Result<(), CommandError> {
    let events = ctx.manager.admin_events(Some(limit), None).await.map_err(|e| match e {
        ManageError::BadRequest { field, message } => input(format!("--{field}: {message}")),
        other => other.into(),
    })?;
    ctx.print(&events, || {
        let wa = width("ACTOR", events.iter().map(|e| e.actor.as_str()), 40);
        let wt = width("ACTION", events.iter().map(|e| e.action.as_str()), 32);
        let wg = width("TARGET", events.iter().map(|e| e.target.as_deref().unwrap_or("-")), 64);
        outln!(
            "{:<20} {:<wa$} {:<22} {:<wt$} {:<wg$} DETAIL",
            "TIME",
            "ACTOR",
            "CLIENT",
            "ACTION",
            "TARGET"
        );
        for e in &events {
            outln!(
                "{:<20} {:<wa$} {:<22} {:<wt$} {:<wg$} {}",
                time(e.at),
                e.actor,
                e.client.as_deref().unwrap_or("-"),
                e.action,
                e.target.as_deref().unwrap_or("-"),
                e.detail
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
            ctx.manager.record_sync_run(&ctx.actor, &pass).await;
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
            let status = ctx.manager.sync_status(Some(sync.mode.as_str())).await?;
            ctx.print(&status, || {
                for (name, pass) in [("incremental", &status.incremental), ("full", &status.full)] {
                    match pass {
                        None => outln!("{name:<12} never run"),
                        Some(pass) => print_pass(pass),
                    }
                }
                match status.lag_seconds {
                    Some(lag) => outln!("lag          {lag} s since the store was last known current"),
                    None => outln!("lag          no pass has completed yet"),
                }
                outln!("{}", push_line(sync.mode, status.push.as_ref()));
                match &status.leader {
                    Some(lead) => outln!("leader       {} since {}", lead.node, time(lead.since)),
                    None => outln!("leader       none (no fedgate serve with [sync] is running)"),
                }
            });
            Ok(())
        }
    }
}

/// The `push` line of `fedgate sync status`.
fn push_line(mode: crate::config::SyncMode, push: Option<&crate::store::PushStatus>) -> String {
    let last = |p: &crate::store::PushStatus| match p.last_change_at {
        Some(at) => time(at),
        None => "never".into(),
    };
    match (mode, push) {
        (crate::config::SyncMode::Poll, _) => "push         off (sync.mode = \"poll\")".into(),
        (_, None) => "push         not started (no fedgate serve with [sync] has run push sync)".into(),
        (_, Some(p)) if p.method == "none" => format!(
            "push         unsupported by the directory{}: polling every interval",
            p.server.as_deref().map(|s| format!(" ({s})")).unwrap_or_default()
        ),
        (_, Some(p)) if p.connected => format!(
            "push         connected ({}) to {} since {} on {}; last change {}{}",
            p.method,
            p.server.as_deref().unwrap_or("?"),
            p.since.map(time).unwrap_or_default(),
            p.node,
            last(p),
            p.error.as_deref().map(|e| format!("; {e}")).unwrap_or_default()
        ),
        (_, Some(p)) => format!(
            "push         down ({}) since {} on {}: polling every interval; last change {}{}",
            p.method,
            p.since.map(time).unwrap_or_default(),
            p.node,
            last(p),
            p.error.as_deref().map(|e| format!("; {e}")).unwrap_or_default()
        ),
    }
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

#[derive(Serialize)]
struct PolicyTestView {
    /// allow or deny.
    decision: &'static str,
    /// The deciding rule's name; none when no rule matched (default allow).
    policy: Option<String>,
    /// The audit reason a denial is logged with.
    reason: Option<String>,
    /// Whether the decision is made before any secret is checked.
    before_secret: bool,
    rules: Vec<PolicyRuleView>,
}

#[derive(Serialize)]
struct PolicyRuleView {
    index: usize,
    name: String,
    action: &'static str,
    conditions: String,
    /// matched, request_differs, user_differs or not_reached.
    result: &'static str,
}

/// `fedgate policy test`: which rule decides and why, without signing in.
pub async fn policy_test(ctx: &Ctx, args: &PolicyTestArgs) -> Result<(), CommandError> {
    use crate::policy::{Explained, Request, RouteRef, UserFacts, Verdict};
    let route = ctx.config.routes.iter().find(|r| r.name == args.route).ok_or_else(|| {
        let names: Vec<&str> = ctx.config.routes.iter().map(|r| r.name.as_str()).collect();
        input(format!(
            "--route: no [[route]] is named \"{}\" (known: {})",
            args.route,
            names.join(", ")
        ))
    })?;
    let user = ctx.manager.show_user(&args.user).await?.user;
    let policies = &ctx.config.policies;
    let request = Request {
        route: RouteRef {
            name: &route.name,
            path: &route.path,
        },
        ip: args.from,
        user_agent: &args.agent,
        kind: args.kind,
    };
    let groups = user.directory.as_ref().map_or(&[][..], |d| &d.groups);
    let facts = UserFacts {
        mfa_state: user.mfa_state,
        groups,
    };
    let verdict = policies.decide(&request, &facts);
    let before_secret = policies.before_user(&request).is_some();
    let rules = policies
        .explain(&request, &facts)
        .into_iter()
        .map(|(rule, why)| PolicyRuleView {
            index: rule.index,
            name: rule.name.clone(),
            action: rule.action.as_str(),
            conditions: rule.describe(),
            result: match why {
                Some(Explained::Matched) => "matched",
                Some(Explained::RequestDiffers) => "request_differs",
                Some(Explained::UserDiffers) => "user_differs",
                None => "not_reached",
            },
        })
        .collect();
    let denied = verdict.denied();
    let view = PolicyTestView {
        decision: if denied.is_some() { "deny" } else { "allow" },
        policy: match verdict {
            Verdict::Rule(rule) => Some(rule.name.clone()),
            Verdict::Default => None,
        },
        reason: denied.map(|rule| format!("policy_denied:{}", rule.reason)),
        before_secret,
        rules,
    };
    ctx.print(&view, || {
        let w = width("NAME", view.rules.iter().map(|r| r.name.as_str()), 64);
        for r in &view.rules {
            let result = match r.result {
                "matched" => "MATCHED",
                "request_differs" => "no (route, network, agent or credential)",
                "user_differs" => "no (groups or MFA state)",
                _ => "not reached",
            };
            outln!(
                "policy[{}] {:<w$} {:<5} {}: {}",
                r.index,
                r.name,
                r.action,
                r.conditions,
                result
            );
        }
        let when = if view.before_secret {
            "before any secret is checked"
        } else {
            "once the credential is known"
        };
        match (&view.policy, &view.reason) {
            (Some(name), Some(reason)) => outln!("decision: deny by \"{name}\" ({reason}), {when}"),
            (Some(name), None) => outln!("decision: allow by \"{name}\", {when}"),
            _ => outln!("decision: allow (no policy matched)"),
        }
    });
    Ok(())
}
