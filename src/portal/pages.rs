//! The portal's pages: plain server-rendered HTML, one small stylesheet,
//! no script but the copy button's. Every value from a user or the store
//! goes through [`esc`].

use std::fmt::Write;

use crate::model::AppPassword;

pub use crate::html::escape as esc;

/// What every page shares.
pub struct Frame<'a> {
    /// The portal's base path (`/portal`).
    pub base: &'a str,
    /// The form token.
    pub csrf: &'a str,
    /// Shown in the heading.
    pub issuer: &'a str,
}

impl Frame<'_> {
    pub fn page(&self, title: &str, body: &str) -> String {
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title} - {issuer}</title>\n<link rel=\"stylesheet\" href=\"{base}/style.css\">\n</head>\n\
             <body>\n<header><p class=\"brand\">{issuer} security</p></header>\n<main>\n<h1>{title}</h1>\n{body}\n</main>\n</body>\n</html>\n",
            title = esc(title),
            issuer = esc(self.issuer),
            base = esc(self.base),
        )
    }

    fn csrf_field(&self) -> String {
        format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(self.csrf))
    }

    fn error(message: Option<&str>) -> String {
        message
            .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>\n", esc(m)))
            .unwrap_or_default()
    }

    pub fn sign_in(&self, upn: &str, return_to: &str, error: Option<&str>) -> String {
        let body = format!(
            "{error}<p>Sign in with your organizational account: your user name and the password you use at work.</p>\n\
             <form id=\"sign-in-form\" method=\"post\" action=\"{base}/sign-in\">\n{csrf}\n\
             <input type=\"hidden\" name=\"return\" value=\"{ret}\">\n\
             <label for=\"upn\">User name</label>\n\
             <input id=\"upn\" name=\"upn\" type=\"text\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required value=\"{upn}\" placeholder=\"alice@contoso.example\">\n\
             <label for=\"password\">Password</label>\n\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\n\
             <button id=\"sign-in\" type=\"submit\">Sign in</button>\n</form>",
            error = Self::error(error),
            base = esc(self.base),
            csrf = self.csrf_field(),
            ret = esc(return_to),
            upn = esc(upn),
        );
        self.page("Sign in", &body)
    }

    pub fn verify(&self, error: Option<&str>) -> String {
        let body = format!(
            "{error}<p>Enter the 6-digit code your authenticator app shows for this account.</p>\n\
             <form id=\"verify-form\" method=\"post\" action=\"{base}/verify\">\n{csrf}\n\
             <label for=\"code\">Code</label>\n\
             <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9 ]*\" maxlength=\"8\" required>\n\
             <button id=\"verify\" type=\"submit\">Verify</button>\n</form>\n{sign_out}",
            error = Self::error(error),
            base = esc(self.base),
            csrf = self.csrf_field(),
            sign_out = self.sign_out_form(),
        );
        self.page("Second factor", &body)
    }

    pub fn register(&self, qr_svg: &str, text_key: &str, needs_current: bool, error: Option<&str>) -> String {
        let current = if needs_current {
            "<label for=\"current-code\">Code from your current authenticator</label>\n\
             <input id=\"current-code\" name=\"current_code\" type=\"text\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"8\" required>\n"
        } else {
            ""
        };
        let body = format!(
            "{error}<ol class=\"steps\">\n\
             <li>Install an authenticator app on your phone (for example Microsoft Authenticator, Google Authenticator or FreeOTP).</li>\n\
             <li>In the app, add an account and scan this code:\n<div id=\"qr\">{qr}</div>\n\
             If you cannot scan it, enter this key instead (time-based, 6 digits):\n\
             <p><code id=\"text-key\">{key}</code></p></li>\n\
             <li>Enter the code the app now shows, to confirm.</li>\n</ol>\n\
             <form id=\"register-form\" method=\"post\" action=\"{base}/register\">\n{csrf}\n{current}\
             <label for=\"code\">Code from the new authenticator</label>\n\
             <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"numeric\" autocomplete=\"one-time-code\" maxlength=\"8\" required>\n\
             <button id=\"register\" type=\"submit\">Confirm</button>\n</form>\n{sign_out}",
            error = Self::error(error),
            qr = qr_svg,
            key = esc(text_key),
            base = esc(self.base),
            csrf = self.csrf_field(),
            sign_out = self.sign_out_form(),
        );
        self.page("Set up your authenticator", &body)
    }

    pub fn registered(&self, allow_app_passwords: bool, routes: &[String], continue_to: Option<&str>) -> String {
        let offer = if allow_app_passwords {
            format!(
                "<h2>Mail and calendar apps</h2>\n\
                 <p>Apps that cannot ask for a code (the phone's mail app, Outlook) now need an app password instead of your password. Create one for each device now.</p>\n{}",
                self.create_form(0, routes, None)
            )
        } else {
            String::new()
        };
        let body = format!(
            "<p class=\"ok\" role=\"status\">Your authenticator is registered. From now on you sign in with your password and a code.</p>\n\
             {offer}\n{cont}<p><a href=\"{base}/security\">Go to your security settings</a></p>",
            base = esc(self.base),
            cont = continue_to
                .map(|to| format!("<p><a id=\"continue\" href=\"{}\">Continue to where you were going</a></p>\n", esc(to)))
                .unwrap_or_default(),
        );
        self.page("Authenticator registered", &body)
    }

    fn create_form(&self, count: usize, routes: &[String], error: Option<&str>) -> String {
        format!(
            "{error}<form id=\"create-app-password-form\" method=\"post\" action=\"{base}/app-passwords\">\n{csrf}\n\
             <label for=\"app-password-name\">Device name</label>\n\
             <input id=\"app-password-name\" name=\"name\" type=\"text\" maxlength=\"64\" required placeholder=\"Alice's iPhone Mail\">\n\
             <p class=\"hint\">Use one app password per device, named after it, so you can delete just that one when the device is lost. You have {count} of 40.</p>\n\
             <fieldset id=\"create-limits\"><legend>Limits (optional)</legend>\n\
             {scope}<p class=\"hint\">Tick none to let it sign in to every service.</p>\n\
             {expires}\n\
             <label for=\"app-password-from\">Only from these networks</label>\n\
             <input id=\"app-password-from\" name=\"from\" type=\"text\" maxlength=\"1000\" placeholder=\"192.0.2.0/24 2001:db8::/32\">\n\
             <p class=\"hint\">Addresses or CIDRs, split by spaces; leave empty for anywhere.</p></fieldset>\n\
             <button id=\"create-app-password\" type=\"submit\">Create app password</button>\n</form>",
            error = Self::error(error),
            base = esc(self.base),
            csrf = self.csrf_field(),
            scope = scope_boxes("create", routes, &[]),
            expires = expiry_select("create-expires", "Never", None),
        )
    }

    fn sign_out_form(&self) -> String {
        format!(
            "<form id=\"sign-out-form\" method=\"post\" action=\"{base}/sign-out\">{csrf}<button id=\"sign-out\" type=\"submit\" class=\"secondary\">Sign out</button></form>",
            base = esc(self.base),
            csrf = self.csrf_field(),
        )
    }

    /// Each app password's row shows its limits (`td.limits`) and holds a
    /// form that narrows them (`form.narrow-app-password`).
    #[allow(clippy::too_many_arguments)]
    pub fn security(
        &self,
        upn: &str,
        app_passwords: &[AppPassword],
        routes: &[String],
        allow_app_passwords: bool,
        error: Option<&str>,
        time: impl Fn(i64) -> String,
    ) -> String {
        let mut rows = String::new();
        for a in app_passwords {
            let _ = writeln!(
                rows,
                "<tr data-name=\"{name}\"><td>{name}</td><td>{created}</td><td>{used}</td><td>{ip}</td><td>{agent}</td>\
                 <td class=\"limits\"><span class=\"scope\">{scope}</span><br><span class=\"expires\">{expires}</span><br><span class=\"networks\">{networks}</span></td>\
                 <td><details><summary>Narrow</summary>{narrow}</details>\
                 <form class=\"delete-app-password\" method=\"post\" action=\"{base}/app-passwords/delete\">{csrf}\
                 <input type=\"hidden\" name=\"name\" value=\"{name}\"><button type=\"submit\" class=\"secondary\" aria-label=\"Delete {name}\">Delete</button></form></td></tr>",
                name = esc(&a.name),
                created = esc(&time(a.created_at)),
                used = a.last_used_at.map(|t| esc(&time(t))).unwrap_or_else(|| "never".into()),
                ip = esc(a.last_ip.as_deref().unwrap_or("")),
                agent = esc(a.last_user_agent.as_deref().unwrap_or("")),
                scope = if a.limits.scope.is_empty() {
                    "All services".to_owned()
                } else {
                    format!("Only {}", esc(&a.limits.scope.join(", ")))
                },
                expires = a
                    .limits
                    .expires_at
                    .map(|t| format!("Expires {}", esc(&time(t))))
                    .unwrap_or_else(|| "Never expires".into()),
                networks = if a.limits.networks.is_empty() {
                    "From anywhere".to_owned()
                } else {
                    let nets: Vec<String> = a.limits.networks.iter().map(ToString::to_string).collect();
                    format!("Only from {}", esc(&nets.join(", ")))
                },
                narrow = self.narrow_form(a, routes),
                base = esc(self.base),
                csrf = self.csrf_field(),
            );
        }
        if app_passwords.is_empty() {
            rows.push_str("<tr><td colspan=\"7\">No app passwords.</td></tr>\n");
        }
        let create = if allow_app_passwords {
            self.create_form(app_passwords.len(), routes, error)
        } else {
            format!(
                "{}<p>Your organization does not allow app passwords.</p>",
                Self::error(error)
            )
        };
        let body = format!(
            "<p>Signed in as <strong>{upn}</strong>.</p>\n\
             <h2>App passwords</h2>\n\
             <div class=\"table\"><table id=\"app-passwords\">\n<caption>Your app passwords</caption>\n\
             <thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Created</th><th scope=\"col\">Last used</th><th scope=\"col\">From</th><th scope=\"col\">Client</th><th scope=\"col\">Limits</th><th scope=\"col\"><span class=\"visually-hidden\">Actions</span></th></tr></thead>\n\
             <tbody>\n{rows}</tbody>\n</table></div>\n{create}\n\
             <h2>Authenticator</h2>\n<p><a id=\"change-authenticator\" href=\"{base}/register\">Change your authenticator app</a></p>\n{sign_out}",
            upn = esc(upn),
            base = esc(self.base),
            sign_out = self.sign_out_form(),
        );
        self.page("Security verification", &body)
    }

    /// A form that narrows one app password: the routes it may use (only
    /// those it has, or all when it has no scope), an earlier expiry, its
    /// networks. What is left as it is stays.
    fn narrow_form(&self, a: &AppPassword, routes: &[String]) -> String {
        let offered = super::offered_scope(&a.limits, routes);
        let ticked: &[String] = if a.limits.scope.is_empty() {
            offered
        } else {
            &a.limits.scope
        };
        let nets: Vec<String> = a.limits.networks.iter().map(ToString::to_string).collect();
        let id = format!("narrow-{}", a.id);
        format!(
            "<form class=\"narrow-app-password\" method=\"post\" action=\"{base}/app-passwords/narrow\">{csrf}\
             <input type=\"hidden\" name=\"name\" value=\"{name}\">{scope}{expires}\
             <label for=\"{id}-from\">Only from these networks</label>\
             <input id=\"{id}-from\" name=\"from\" type=\"text\" maxlength=\"1000\" value=\"{from}\">\
             <button type=\"submit\" aria-label=\"Narrow {name}\">Save</button></form>",
            base = esc(self.base),
            csrf = self.csrf_field(),
            name = esc(&a.name),
            scope = scope_boxes(&id, offered, ticked),
            expires = expiry_select(&format!("{id}-expires"), "As it is", a.limits.expires_at),
            from = esc(&nets.join(" ")),
        )
    }

    pub fn new_app_password(&self, name: &str, password: &str) -> String {
        let body = format!(
            "<p>Your new app password for <strong>{name}</strong>:</p>\n\
             <p class=\"secret\"><output id=\"new-app-password\">{password}</output></p>\n\
             <p><button id=\"copy\" type=\"button\" data-copy=\"new-app-password\" hidden>Copy</button></p>\n\
             <p>Enter it in the device's mail or calendar app in place of your password. It is shown only now: it cannot be shown again.</p>\n\
             <p><a href=\"{base}/security\">Done</a></p>\n<script src=\"{base}/copy.js\"></script>",
            name = esc(name),
            password = esc(password),
            base = esc(self.base),
        );
        self.page("App password created", &body)
    }

    pub fn message(&self, title: &str, message: &str) -> String {
        let body = format!(
            "<p class=\"error\" role=\"alert\">{}</p>\n<p><a href=\"{}/sign-in\">Sign in</a></p>",
            esc(message),
            esc(self.base)
        );
        self.page(title, &body)
    }
}

pub const STYLE: &str = "\
:root{color-scheme:light;--fg:#1b1f24;--muted:#57606a;--accent:#0b5cad;--bad:#b42318;--ok:#067647;--line:#d0d7de}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:#f6f8fa}
header{background:var(--accent);color:#fff;padding:.6rem 1rem}
.brand{margin:0;font-weight:600}
main{max-width:44rem;margin:1.5rem auto;padding:1.5rem;background:#fff;border:1px solid var(--line);border-radius:8px}
h1{font-size:1.5rem;margin-top:0}
h2{font-size:1.15rem;margin-top:2rem}
label{display:block;font-weight:600;margin:.9rem 0 .3rem}
input[type=text],input[type=password]{width:100%;padding:.6rem;font-size:1rem;border:1px solid #8c959f;border-radius:6px}
button{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem;border:0;border-radius:6px;background:var(--accent);color:#fff;cursor:pointer}
button.secondary{background:#eaeef2;color:var(--fg);margin-top:.5rem}
:focus-visible{outline:3px solid #f5a623;outline-offset:2px}
.error{color:var(--bad);font-weight:600}
.ok{color:var(--ok);font-weight:600}
.hint{color:var(--muted);font-size:.9rem}
#qr svg{width:14rem;height:14rem;max-width:100%;display:block;margin:.8rem 0}
code,output{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:1.1rem;letter-spacing:.05em;word-break:break-all}
.secret output{font-size:1.4rem;padding:.4rem .6rem;background:#f6f8fa;border:1px dashed var(--line);border-radius:6px}
.table{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem}
caption{text-align:left;color:var(--muted)}
th,td{text-align:left;padding:.4rem;border-bottom:1px solid var(--line);vertical-align:middle}
td form button{margin:0}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
#text-key{word-break:normal}
@media (max-width:40rem){main{margin:0;border:0;border-radius:0;padding:1rem}
table,tbody,tr,td{display:block}thead{position:absolute;left:-9999px}
tr{border-bottom:1px solid var(--line);padding:.5rem 0}td{border:0;padding:.15rem 0}
td:nth-child(2)::before{content:'Created: '}td:nth-child(3)::before{content:'Last used: '}
td:nth-child(4)::before{content:'From: '}td:nth-child(5)::before{content:'Client: '}
td:first-child{font-weight:600}}
";

/// The copy button: shown only where script runs; the page works without.
pub const COPY_JS: &str = "\
document.querySelectorAll('button[data-copy]').forEach(function (b) {
  b.hidden = false;
  b.addEventListener('click', function () {
    var t = document.getElementById(b.getAttribute('data-copy')).textContent;
    navigator.clipboard.writeText(t).then(function () { b.textContent = 'Copied'; });
  });
});
";

/// A box `scope:NAME` per route, `ticked` ones checked; nothing when there
/// are no routes to choose from.
fn scope_boxes(id: &str, routes: &[String], ticked: &[String]) -> String {
    if routes.is_empty() {
        return String::new();
    }
    let mut boxes = String::from("<p>Only these services:</p>\n");
    for (i, route) in routes.iter().enumerate() {
        let _ = writeln!(
            boxes,
            "<label for=\"{id}-scope-{i}\"><input id=\"{id}-scope-{i}\" type=\"checkbox\" name=\"scope:{route}\"{checked}> {route}</label>",
            id = esc(id),
            route = esc(route),
            checked = if ticked.contains(route) { " checked" } else { "" },
        );
    }
    boxes
}

/// Expiry choices: `first` (no value: never, or no change), then the usual
/// lifetimes from now; with a current expiry, the hint says when it is.
fn expiry_select(id: &str, first: &str, current: Option<i64>) -> String {
    let now = current
        .map(|at| format!(" (now {})", esc(&crate::model::rfc3339(at))))
        .unwrap_or_default();
    format!(
        "<label for=\"{id}\">Expires{now}</label>\n<select id=\"{id}\" name=\"expires\">\
         <option value=\"\">{first}</option><option value=\"1d\">In a day</option><option value=\"7d\">In a week</option>\
         <option value=\"30d\">In 30 days</option><option value=\"90d\">In 90 days</option><option value=\"365d\">In a year</option></select>",
        id = esc(id),
        first = esc(first),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_everywhere() {
        let frame = Frame {
            base: "/portal",
            csrf: "t\"<",
            issuer: "Contoso",
        };
        let page = frame.sign_in("<script>alert(1)</script>", "/app?a=1&b=\"2\"", Some("bad <b>"));
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("value=\"/app?a=1&amp;b=&quot;2&quot;\""));
        assert!(page.contains("value=\"t&quot;&lt;\""));
        assert!(page.contains("bad &lt;b&gt;"));
    }
}
