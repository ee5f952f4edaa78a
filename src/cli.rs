//! The `fedgate` command line (DESIGN.md, "Command line"): argument types
//! and what each subcommand does. Output for people by default, JSON
//! records with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, ConfigError, Upstream};
use crate::logging::LogFormat;
use crate::model::MfaState;

mod admin;
mod notify;
mod output;
mod report;
use crate::shutdown::Shutdown;
use output::outln;

#[derive(Debug, Parser)]
#[command(name = "fedgate", version, about = "Federation-aware authentication proxy")]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "config/fedgate.toml", env = "FEDGATE_CONFIG")]
    pub config: PathBuf,
    /// Print records as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is not set (e.g. "debug", "info,fedgate::access=off").
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (listeners, admin endpoint, background jobs).
    Serve,
    /// Validate the configuration and print what would listen where.
    CheckConfig,
    /// Manage users and their MFA state.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage a user's app passwords.
    #[command(subcommand)]
    AppPassword(AppPasswordCommand),
    /// Show or change store-wide settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Show the sign-in log, newest first.
    Signins(SigninsArgs),
    /// Run a directory sync pass now, or show how the passes went.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Show the admin event log (changes made through the admin API and
    /// these commands), newest first.
    AdminEvents {
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Create the store (every other command but `serve` needs one that
    /// exists), or copy it into another.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Write a consistent, checked copy of the running SQLite store to a new file.
    #[command(long_about = BACKUP_ABOUT)]
    Backup {
        /// The file to create (refused if it exists).
        path: PathBuf,
    },
    /// Reports on the store.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Mail each user newly put in MFA state `enabled` the enrolment notice.
    Notify(NotifyArgs),
    /// Ask the `[[policy]]` tables about a sign-in, without signing in.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Which rule decides a sign-in and why: each rule in order, whether it
    /// matched, and the decision.
    Test(PolicyTestArgs),
}

#[derive(Debug, clap::Args)]
pub struct PolicyTestArgs {
    /// The user (their groups and MFA state are read from the store).
    #[arg(long)]
    pub user: String,
    /// The route, by its `[[route]] name` (or its path when unnamed).
    #[arg(long)]
    pub route: String,
    /// The client address, as resolved through `[server] trusted_proxies`.
    #[arg(long, value_name = "IP")]
    pub from: std::net::IpAddr,
    /// password, app_password or session.
    #[arg(long)]
    pub kind: crate::policy::Kind,
    /// The client's User-Agent.
    #[arg(long, default_value = "")]
    pub agent: String,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Per UTC day: sign-ins by credential kind and result, users enabled
    /// or enforced; and the app passwords not used for 90 days.
    Usage(UsageArgs),
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// First day, YYYY-MM-DD (UTC); default 29 days before --to.
    #[arg(long, value_name = "DATE")]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC), included; default today.
    #[arg(long, value_name = "DATE")]
    pub to: Option<String>,
    /// Print CSV sections (days, then app passwords to clean up).
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    /// Print each message that would be sent; send and record nothing.
    #[arg(long)]
    pub dry_run: bool,
}

const BACKUP_ABOUT: &str = "\
Write a consistent copy of the SQLite store named by [store] url to PATH,
while `fedgate serve` keeps running and writing.

The copy is one snapshot of the store (SQLite's VACUUM INTO), written under
a temporary name in PATH's directory with mode 0600, checked (PRAGMA
integrity_check, the store's schema version) and only then given its name.
A PATH that exists is refused (exit 2); so is a PostgreSQL store: back it up
with pg_dump, or copy it into a SQLite file with `fedgate store copy`.

Keep the key files with every backup: [store] key_file (app passwords are
found through tags keyed with it) and [portal] secret_key_file (TOTP secrets
are sealed with it). A restored store without them signs in no app password
and accepts no authenticator code. Never copy the database file or its
-wal and -shm files by hand while fedgate runs.";

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create the store named by `[store] url` with its schema, and the
    /// server key; refuses (exit 2) if the store exists.
    Init,
    /// Copy a whole store into an empty one (SQLite to PostgreSQL, or back).
    #[command(long_about = COPY_ABOUT)]
    Copy(StoreCopyArgs),
}

const COPY_ABOUT: &str = "\
Copy a whole store into an empty one: SQLite to PostgreSQL (a one-node site
growing to several nodes), PostgreSQL to SQLite, or either to its own kind.

Everything a running fedgate relies on is copied as stored, ids included:
users (password hashes, directory attributes, TOTP secrets, failed-code
counts), app passwords and their last use, settings, portal sessions, the
sign-in log, sync passes and the sync mark, the MFA state history and the
enrolment notices. Not copied: the change feed
(the target keeps its own), the sync lease (the target's nodes take their
own), and the store id (the target keeps its own: it is another database).

The source must exist; it is read in one snapshot and not written (a store
made by an older fedgate is first brought to this one's schema, as by any
command). The target is created with its schema when missing (a SQLite
file, or the schema in an existing, empty PostgreSQL database); a target
that holds any user, app password, portal session, sign-in record or sync
pass is refused (exit 2) and left unchanged. The copy is written in one
transaction: if it fails, the target holds none of it. Prints the rows
copied per table.

This command reads no config file: name both stores, and the password and
CA files of PostgreSQL ones, here. The store's key files are not in the
store and must travel with it: [store] key_file (app-password lookup tags
are keyed with it) and [portal] secret_key_file (TOTP secrets are sealed
with it). Without the same two files on every node, app passwords and
authenticators stop working.

Moving a one-node site to PostgreSQL:
  1. stop fedgate (what it writes after the copy's snapshot is not copied)
  2. fedgate store copy --from sqlite://data/fedgate.db \\
       --to postgres://fedgate@db.example.com:5432/fedgate \\
       --to-password-file /etc/fedgate/db-password --to-ca-file /etc/fedgate/db-ca.pem
  3. set [store] url, password_file and ca_file in every node's config to
     the PostgreSQL store, give every node the same data/fedgate.key and
     data/portal.key, and start them";

#[derive(Debug, clap::Args)]
pub struct StoreCopyArgs {
    /// The store to copy: sqlite://PATH or postgres://USER@HOST:PORT/DATABASE.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The store to copy into: a new SQLite file, an empty store, or an
    /// empty PostgreSQL database.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// A file holding the source database's password (as [store] password_file).
    #[arg(long, value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// A file holding the target database's password (as [store] password_file).
    #[arg(long, value_name = "FILE")]
    pub to_password_file: Option<PathBuf>,
    /// The CA of the source database server's certificate (as [store] ca_file).
    #[arg(long, value_name = "FILE")]
    pub from_ca_file: Option<PathBuf>,
    /// The CA of the target database server's certificate (as [store] ca_file).
    #[arg(long, value_name = "FILE")]
    pub to_ca_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Run one pass (a full one unless --incremental); exits 1 when it
    /// failed or the mass-change guard stopped it.
    Run {
        /// Apply a pass even if it disables or deletes more users than the
        /// guard allows (`sync.max_change_share`).
        #[arg(long)]
        force: bool,
        /// Only entries changed since the last pass.
        #[arg(long)]
        incremental: bool,
    },
    /// The last incremental and full passes, and the lag since the last
    /// completed one.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a cloud-only user (directory users come from the directory).
    Add {
        upn: String,
        /// Read the user's password from standard input (else: app passwords only).
        #[arg(long)]
        password_stdin: bool,
        /// MFA state: disabled, enabled or enforced.
        #[arg(long, default_value = "disabled", value_parser = admin::parse_state)]
        state: MfaState,
    },
    /// List users (deleted ones are left out).
    List {
        #[arg(long, value_parser = admin::parse_state)]
        state: Option<MfaState>,
    },
    /// Show one user and their app passwords.
    Show { upn: String },
    /// Set the MFA state of users; all or nothing.
    SetState {
        /// disabled, enabled or enforced, for the UPNs named.
        #[arg(long, value_parser = admin::parse_state, conflicts_with = "csv")]
        state: Option<MfaState>,
        /// A file of "upn,state" lines.
        #[arg(long)]
        csv: Option<PathBuf>,
        upns: Vec<String>,
    },
    /// Create cloud-only users from a CSV file of "upn,state" lines (state
    /// may be empty: disabled); all or nothing.
    Import {
        /// The file; blank lines, `#` comments and a "upn,state" header are skipped.
        #[arg(long)]
        csv: PathBuf,
    },
    /// Mark a user deleted and delete their app passwords, password and
    /// second factor. A directory user comes back at the next sync pass if
    /// the directory still has them.
    Delete { upn: String },
    /// Set a cloud-only user's password, read from standard input.
    SetPassword {
        upn: String,
        /// Read the password from standard input (the only way).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a cloud-only user's password: app passwords only from then on.
    ClearPassword { upn: String },
    /// Delete every app password of a user.
    RevokeAppPasswords { upn: String },
    /// Block a user's sign-ins (app passwords are kept; `enable` restores them).
    Disable { upn: String },
    /// Allow a disabled user's sign-ins again.
    Enable { upn: String },
    /// Make a user register their second factor again.
    RequireRegistration { upn: String },
}

#[derive(Debug, Subcommand)]
pub enum AppPasswordCommand {
    /// Generate an app password; it is printed once.
    Create {
        upn: String,
        /// The device it is for (1 to 64 characters, unique per user).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List a user's app passwords (never the passwords themselves).
    List { upn: String },
    /// Narrow an app password's limits: each option given replaces that
    /// limit (it must not widen it), the others stay.
    Narrow {
        upn: String,
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Delete one app password by name.
    Delete { upn: String, name: String },
}

/// An app password's limits on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Only on these routes (`[[route]] name`); default: every route.
    #[arg(long, value_name = "ROUTE_NAME", num_args = 1..)]
    pub scope: Option<Vec<String>>,
    /// Refused after this long, such as 90d; default: never.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    /// Only from these networks (CIDRs or addresses); default: anywhere.
    #[arg(long, value_name = "CIDR", num_args = 1..)]
    pub from: Option<Vec<String>>,
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    Show,
    /// Change a setting: `settings set allow-app-passwords true|false`.
    Set {
        name: String,
        value: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct SigninsArgs {
    /// Only this user's sign-ins (also attempts under that name by nobody known).
    #[arg(long)]
    pub user: Option<String>,
    /// Only the last DURATION (e.g. 1h, 30m, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// success or failure.
    #[arg(long)]
    pub result: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// Exit codes: 0 success, 1 runtime failure, 2 configuration or input
/// error (a missing store included), 141 standard output closed by its
/// reader.
pub fn run(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Serve => serve(&cli),
        Command::CheckConfig => check_config(&cli),
        Command::Store(StoreCommand::Copy(ref args)) => store_copy(args, cli.json),
        Command::Backup { ref path } => backup(&cli, path),
        Command::Report(ReportCommand::Usage(ref args)) => report::usage(&cli, args),
        Command::Notify(ref args) => notify::run(&cli, args),
        Command::User(_)
        | Command::AppPassword(_)
        | Command::Settings(_)
        | Command::Signins(_)
        | Command::Sync(_)
        | Command::AdminEvents { .. }
        | Command::Policy(_)
        | Command::Store(_) => admin_command(cli),
    };
    match output::failure() {
        None => code,
        // A reader that stopped reading wanted no more: nothing to say.
        Some((std::io::ErrorKind::BrokenPipe, _)) if code == ExitCode::SUCCESS => {
            ExitCode::from(output::CLOSED_PIPE_EXIT)
        }
        Some((_, err)) if code == ExitCode::SUCCESS => {
            eprintln!("fedgate: cannot write to standard output: {err}");
            ExitCode::from(1)
        }
        Some(_) => code,
    }
}

fn admin_command(cli: Cli) -> ExitCode {
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        if let Command::Store(StoreCommand::Init) = cli.command {
            return admin::store_init(&config).await;
        }
        let ctx = admin::Ctx::open(config, json).await?;
        let result = match cli.command {
            Command::User(cmd) => admin::user(&ctx, cmd).await,
            Command::AppPassword(cmd) => admin::app_password_cmd(&ctx, cmd).await,
            Command::Settings(cmd) => admin::settings(&ctx, cmd).await,
            Command::Signins(args) => admin::signins(&ctx, args).await,
            Command::Sync(cmd) => admin::sync(&ctx, cmd).await,
            Command::AdminEvents { limit } => admin::admin_events(&ctx, limit).await,
            Command::Policy(PolicyCommand::Test(args)) => admin::policy_test(&ctx, &args).await,
            Command::Serve
            | Command::CheckConfig
            | Command::Store(_)
            | Command::Backup { .. }
            | Command::Report(_)
            | Command::Notify(_) => Ok(()),
        };
        ctx.store.close().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fedgate: {err}");
            err.exit_code()
        }
    }
}

/// The runtime an admin command runs on: one thread is plenty.
fn command_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("fedgate: cannot start the async runtime: {err}");
            ExitCode::from(1)
        })
}

/// `fedgate store copy`: needs no config, only the two stores.
fn store_copy(args: &StoreCopyArgs, json: bool) -> ExitCode {
    let runtime = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(admin::store_copy(args, json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fedgate: {err}");
            err.exit_code()
        }
    }
}

/// `fedgate backup PATH`: needs the config's store and key file names, not
/// an opened store (the copy reads the file on its own).
fn backup(cli: &Cli, path: &std::path::Path) -> ExitCode {
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match command_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = match runtime.block_on(crate::backup::backup(&config, path)) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("fedgate: {err}");
            return ExitCode::from(if err.is_input() { 2 } else { 1 });
        }
    };
    if cli.json {
        match serde_json::to_string(&report) {
            Ok(s) => outln!("{s}"),
            Err(err) => {
                eprintln!("fedgate: {err}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    outln!(
        "backup written: {} ({} bytes, schema version {}, integrity ok)",
        report.path.display(),
        report.bytes,
        report.schema_version
    );
    outln!("keep these files with it (they are not in the store):");
    for kept in &report.keep_with_it {
        outln!("  {} = {}: {}", kept.key, kept.path.display(), kept.why);
    }
    ExitCode::SUCCESS
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(&cli.config).map_err(|err| {
        report_config_error(&err);
        ExitCode::from(2)
    })
}

fn report_config_error(err: &ConfigError) {
    eprintln!("fedgate: configuration error: {err}");
}

fn serve(cli: &Cli) -> ExitCode {
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("fedgate: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(crate::app::serve_file(config, &cli.config, Shutdown::new()));
    // Connections past the grace period are dropped here, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "fedgate cannot serve");
            eprintln!("fedgate: {err}");
            ExitCode::from(if err.is_configuration() { 2 } else { 1 })
        }
    }
}

#[derive(Serialize)]
struct ListenerView {
    kind: &'static str,
    addr: String,
}

#[derive(Serialize)]
struct RouteView {
    index: usize,
    name: String,
    host: String,
    path: String,
    upstream: String,
    realm: &'static str,
    identity_header: String,
    upstream_timeout: String,
}

#[derive(Serialize)]
struct ConfigView {
    config: String,
    listeners: Vec<ListenerView>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    directory: Option<DirectoryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<SyncView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_auth: Option<ForwardAuthView>,
    routes: Vec<RouteView>,
    policies: Vec<PolicyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mail_auth: Option<MailAuthView>,
}

#[derive(Serialize)]
struct MailAuthView {
    path: String,
    caller_secret: bool,
    /// One line per protocol: its backend and realm, or refused.
    protocols: Vec<String>,
}

#[derive(Serialize)]
struct ForwardAuthView {
    path: String,
    /// The header a caller secret is required in; `None`: any caller.
    secret_header: Option<String>,
}

#[derive(Serialize)]
struct PolicyView {
    index: usize,
    name: String,
    reason: String,
    action: &'static str,
    conditions: String,
    /// Decided from the request alone (no conditions on the user).
    before_secret: bool,
}

#[derive(serde::Serialize)]
struct SyncView {
    interval: String,
    full_every: String,
    change_attribute: String,
}

#[derive(serde::Serialize)]
struct DirectoryView {
    urls: Vec<String>,
    starttls: bool,
    /// "search" (service account, then bind) or "direct".
    bind: &'static str,
    base_dn: String,
    user_filter: String,
    login_filter: String,
    cache_ttl: String,
}

fn check_config(cli: &Cli) -> ExitCode {
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The notice template is part of the configuration: a bad placeholder
    // is found here, not by the first `fedgate notify`.
    if let Some(smtp) = &config.smtp {
        if let Err(err) = crate::notify::Template::load(&smtp.template) {
            eprintln!("fedgate: configuration error: {err}");
            return ExitCode::from(2);
        }
    }
    // So is the token file (its mode, names and lengths), which `serve`
    // reads at start.
    if let Some(path) = config.admin.as_ref().and_then(|a| a.token_file.as_deref()) {
        if let Err(err) = crate::admin::tokens::Tokens::load(path) {
            eprintln!("fedgate: configuration error: {err}");
            return ExitCode::from(2);
        }
    }
    // And the mail endpoint's secret files.
    if let Some(mail) = &config.mail {
        if let Err(err) = crate::mail_auth::read_files(mail) {
            eprintln!("fedgate: configuration error: {err}");
            return ExitCode::from(2);
        }
    }
    // And the forward-auth caller secret, read by every route table.
    if let Some(fa) = &config.forward_auth {
        if let Err(err) = crate::proxy::forward_auth::Endpoint::load(fa) {
            eprintln!("fedgate: configuration error: {err}");
            return ExitCode::from(2);
        }
    }
    let mut listeners = Vec::new();
    for a in &config.server.listen {
        listeners.push(ListenerView {
            kind: "tls",
            addr: a.to_string(),
        });
    }
    for a in &config.server.listen_plain {
        listeners.push(ListenerView {
            kind: "plain",
            addr: a.to_string(),
        });
    }
    if let Some(admin) = &config.admin {
        listeners.push(ListenerView {
            kind: "admin",
            addr: admin.listen.to_string(),
        });
    }
    let tls = !config.server.listen.is_empty();
    let view = ConfigView {
        config: cli.config.display().to_string(),
        listeners,
        tls_cert: tls.then(|| config.server.tls_cert.display().to_string()),
        tls_key: tls.then(|| config.server.tls_key.display().to_string()),
        directory: config.directory.as_ref().map(|d| DirectoryView {
            urls: d.urls.clone(),
            starttls: d.starttls,
            bind: match d.bind {
                crate::config::DirectoryBind::Search { .. } => "search",
                crate::config::DirectoryBind::Direct { .. } => "direct",
            },
            base_dn: d.base_dn.clone(),
            user_filter: d.user_filter.to_string(),
            login_filter: d.login_filter.to_string(),
            cache_ttl: humantime::format_duration(d.cache_ttl).to_string(),
        }),
        sync: config.sync.as_ref().map(|s| SyncView {
            interval: humantime::format_duration(s.interval).to_string(),
            full_every: humantime::format_duration(s.full_every).to_string(),
            change_attribute: s.change_attribute.clone(),
        }),
        forward_auth: config.forward_auth.as_ref().map(|f| ForwardAuthView {
            path: f.path.clone(),
            secret_header: f.secret_file.as_ref().map(|_| f.secret_header.to_string()),
        }),
        routes: config
            .routes
            .iter()
            .map(|r| RouteView {
                index: r.index,
                name: r.name.clone(),
                host: r.host.clone().unwrap_or_else(|| "*".into()),
                path: r.path.clone(),
                upstream: r.upstream.to_string(),
                realm: r.realm.as_str(),
                identity_header: r.identity_header.to_string(),
                upstream_timeout: humantime::format_duration(r.upstream_timeout).to_string(),
            })
            .collect(),
        policies: config
            .policies
            .rules()
            .iter()
            .map(|p| PolicyView {
                index: p.index,
                name: p.name.clone(),
                reason: p.reason.clone(),
                action: p.action.as_str(),
                conditions: p.describe(),
                before_secret: !p.needs_user(),
            })
            .collect(),
        mail_auth: config.mail.as_ref().map(|m| MailAuthView {
            path: m.path.clone(),
            caller_secret: m.secret_file.is_some(),
            protocols: crate::mail_auth::MailAuth::describe(m),
        }),
    };
    if cli.json {
        match serde_json::to_string_pretty(&view) {
            Ok(s) => outln!("{s}"),
            Err(err) => {
                eprintln!("fedgate: {err}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    outln!("{}: OK", view.config);
    for l in &view.listeners {
        outln!("listen  {:<5}  {}", l.kind, l.addr);
    }
    if let (Some(cert), Some(key)) = (&view.tls_cert, &view.tls_key) {
        let note = if std::path::Path::new(cert).exists() {
            ""
        } else {
            " (self-signed pair generated on first start)"
        };
        outln!("tls     cert {cert}, key {key}{note}");
    }
    if let Some(admin) = config.admin.as_ref().filter(|a| a.tls) {
        match &admin.client_ca_file {
            Some(ca) => outln!(
                "admin   tls; client certificates checked against {} (required for /api/)",
                ca.display()
            ),
            None => outln!("admin   tls; no client certificates"),
        }
    }
    if let Some(d) = &view.directory {
        let tls = if d.starttls { " (starttls)" } else { "" };
        outln!("directory  {}{tls}", d.urls.join(", "));
        outln!(
            "directory  {} bind under {}, user_filter {}, login_filter {}, cache {}",
            d.bind,
            d.base_dn,
            d.user_filter,
            d.login_filter,
            d.cache_ttl
        );
    }
    match &view.sync {
        Some(s) => outln!(
            "sync       incremental every {}, full every {}, by {}",
            s.interval,
            s.full_every,
            s.change_attribute
        ),
        None if view.directory.is_some() => outln!("sync       off"),
        None => {}
    }
    if let Some(smtp) = &config.smtp {
        let auto = if smtp.auto {
            format!(", sent by serve every {}", humantime::format_duration(smtp.interval))
        } else {
            String::new()
        };
        outln!(
            "smtp       {}:{} (tls {}), template {}{auto}",
            smtp.host,
            smtp.port,
            smtp.tls.as_str(),
            smtp.template.display()
        );
    }
    if let Some(f) = &view.forward_auth {
        let caller = match &f.secret_header {
            Some(h) => format!("callers must send the secret in {h}"),
            None => "any caller (no secret_file)".to_owned(),
        };
        outln!(
            "forward_auth  on at {} and {}/... on every main listener; {caller}",
            f.path,
            f.path
        );
    }
    for (r, rc) in view.routes.iter().zip(&config.routes) {
        let upstream = match rc.upstream {
            Upstream::Whoami | Upstream::DecideOnly => r.upstream.clone(),
            Upstream::Http(_) => format!("{} (timeout {})", r.upstream, r.upstream_timeout),
        };
        outln!(
            "route[{}]  {}{}  ->  {}  realm={}",
            r.index,
            r.host,
            r.path,
            upstream,
            r.realm
        );
    }
    if let Some(m) = &view.mail_auth {
        let secret = match m.caller_secret {
            true => "callers must send mail_auth.secret_file's secret",
            false => "no caller secret: anyone who reaches the listener may ask",
        };
        outln!("mail_auth  {} (nginx auth_http); {secret}", m.path);
        for line in &m.protocols {
            outln!("mail_auth  {line}");
        }
    }
    if view.policies.is_empty() {
        outln!("policy     none: every sign-in the decision table allows is allowed");
    }
    for p in &view.policies {
        let shown = match p.reason == p.name {
            true => String::new(),
            false => format!(" (logged as policy_denied:{})", p.reason),
        };
        outln!(
            "policy[{}] {} {}{shown}: {}, {}",
            p.index,
            p.name,
            p.action,
            p.conditions,
            if p.before_secret {
                "on the request only"
            } else {
                "on the user too"
            }
        );
    }
    if !view.policies.is_empty() {
        outln!("policy     first match wins; no match: allow");
    }
    ExitCode::SUCCESS
}
