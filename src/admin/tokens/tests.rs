use std::os::unix::fs::PermissionsExt;

use super::*;

const A: &str = "0123456789abcdef0123456789abcdef";
const B: &str = "fedcba9876543210fedcba9876543210";

fn parse(text: &str) -> Result<Tokens, TokenError> {
    Tokens::parse(Path::new("admin.tokens"), text)
}

#[test]
fn names_tokens_comments_and_blank_lines() {
    let tokens = parse(&format!("# ops team\n\nops {A}\n  ci   {B}  \n")).unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens.check(A.as_bytes()), Some("ops"));
    assert_eq!(tokens.check(B.as_bytes()), Some("ci"));
    assert_eq!(tokens.check(b"wrong"), None);
    assert_eq!(tokens.check(&A.as_bytes()[..31]), None);
    assert_eq!(tokens.check(b""), None);
}

#[test]
fn bad_lines_are_refused_with_their_number() {
    let cases = [
        (format!("ops {A}\nops {B}\n"), 2, "used on line 1"),
        ("ops short\n".to_string(), 1, "at least 32"),
        (format!("# c\nops {A} extra\n"), 2, "two words"),
        (format!("ops\n{A}\n"), 1, "two words"),
        (format!("op$ {A}\n"), 1, "letters, digits"),
        (format!("ops {A}\nci {A}\n"), 2, "token of line 1 already"),
    ];
    for (text, want_line, want) in cases {
        match parse(&text) {
            Err(err @ TokenError::Line { line, .. }) => {
                assert_eq!(line, want_line, "{text:?}: {err}");
                assert!(err.to_string().contains(want), "{text:?}: {err}");
                assert!(err.to_string().contains("admin.token_file admin.tokens"), "{err}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    assert!(matches!(parse("# nothing\n"), Err(TokenError::Empty { .. })));
}

#[test]
fn a_line_with_its_columns_swapped_does_not_print_the_token() {
    let err = parse(&format!("{A} ops\n")).unwrap_err().to_string();
    assert!(err.contains("at least 32"), "{err}");
    assert!(!err.contains(A), "the token is in the message: {err}");
}

#[test]
fn a_file_others_can_read_is_refused_and_reload_keeps_the_old_set_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.tokens");
    std::fs::write(&path, format!("ops {A}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    match TokenSet::load(&path) {
        Err(err @ TokenError::Permissions { .. }) => assert!(err.to_string().contains("chmod 600"), "{err}"),
        other => panic!("{other:?}"),
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let set = TokenSet::load(&path).unwrap();
    assert_eq!(set.current().check(A.as_bytes()), Some("ops"));

    std::fs::write(&path, format!("ci {B}\n")).unwrap();
    assert_eq!(set.reload(&path).unwrap(), 1);
    assert_eq!(set.current().check(A.as_bytes()), None);
    assert_eq!(set.current().check(B.as_bytes()), Some("ci"));

    std::fs::write(&path, "ci short\n").unwrap();
    assert!(set.reload(&path).is_err());
    assert_eq!(
        set.current().check(B.as_bytes()),
        Some("ci"),
        "a bad file changes nothing"
    );
}
