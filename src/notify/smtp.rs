//! The [`Mailer`] that sends through the `[smtp]` server (lettre's tokio
//! transport on rustls with the ring provider, like every other TLS
//! connection fedgate makes). It owns the connection settings and the
//! message's shape (plain text, UTF-8); nothing about who gets what.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use futures_util::future::BoxFuture;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Mail, Mailer, NotifyError, SendError};
use crate::config::{SmtpConfig, SmtpTls};

/// Sends through one SMTP server; a connection per message.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl SmtpMailer {
    /// Reads `[smtp] password_file` and `ca_file` and sets the transport
    /// up; connects to nothing yet.
    pub fn new(config: &SmtpConfig) -> Result<SmtpMailer, NotifyError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| NotifyError::Config(format!("smtp.from: {e}")))?;
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(tls_parameters(config)?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters(config)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout));
        if let (Some(username), Some(file)) = (&config.username, &config.password_file) {
            builder = builder.credentials(Credentials::new(username.clone(), read_password(file)?));
        }
        Ok(SmtpMailer {
            transport: builder.build(),
            from,
            server: format!("{}:{}", config.host, config.port),
        })
    }
}

fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, NotifyError> {
    let mut params = TlsParameters::builder(config.host.clone());
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| NotifyError::Config(format!("cannot read smtp.ca_file {}: {e}", ca.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| NotifyError::Config(format!("smtp.ca_file {} holds no PEM certificate: {e}", ca.display())))?;
        params = params
            .certificate_store(CertificateStore::None)
            .add_root_certificate(cert);
    }
    params
        .build_rustls()
        .map_err(|e| NotifyError::Config(format!("smtp: cannot set TLS up for {}: {e}", config.host)))
}

/// The password in `[smtp] password_file`: its first line, from a file
/// nobody but its owner may read.
fn read_password(path: &Path) -> Result<String, NotifyError> {
    let shown = path.display();
    let mut file = std::fs::File::open(path)
        .map_err(|e| NotifyError::Config(format!("cannot read smtp.password_file {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| NotifyError::Config(format!("cannot read smtp.password_file {shown}: {e}")))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(NotifyError::Config(format!(
            "smtp.password_file {shown} has permissions {mode:04o}; it must not be readable by group or others: \
             run `chmod 600 {shown}`"
        )));
    }
    let mut text = String::new();
    file.by_ref()
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| NotifyError::Config(format!("cannot read smtp.password_file {shown}: {e}")))?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        return Err(NotifyError::Config(format!("smtp.password_file {shown} is empty")));
    }
    Ok(password)
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let to: Mailbox = mail
                .to
                .parse()
                .map_err(|e| SendError(format!("{:?} is not a mail address: {e}", mail.to)))?;
            // lettre encodes the subject (RFC 2047) and the body; the
            // template already made every inserted value one line.
            let message = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(mail.subject.clone())
                .header(ContentType::TEXT_PLAIN)
                .body(mail.body.clone())
                .map_err(|e| SendError(format!("cannot build the message: {e}")))?;
            self.transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| SendError(format!("mail server {}: {e}", self.server)))
        })
    }
}
