//! Search-filter templates from the config and the names they are filled
//! with: any template is accepted or refused without a panic, and a name
//! rendered into the usual filters is always one equality assertion holding
//! exactly that name.
#![no_main]

use fedgate::directory::template::{Placeholder, Template, Values};
use libfuzzer_sys::fuzz_target;

fn one_equality(rendered: &str, attribute: &[u8], value: &[u8]) {
    use ldap3::asn1::{OctetString, Sequence, Tag, TagClass};
    let tag = ldap3::parse_filter(rendered).unwrap_or_else(|()| panic!("escaped filter does not parse: {rendered:?}"));
    let Tag::Sequence(Sequence {
        class: TagClass::Context,
        id: 3,
        inner,
    }) = tag
    else {
        panic!("not one equality assertion: {rendered:?}");
    };
    let [Tag::OctetString(OctetString { inner: attr, .. }), Tag::OctetString(OctetString { inner: got, .. })] =
        inner.as_slice()
    else {
        panic!("equality assertion of another shape: {rendered:?}");
    };
    assert_eq!(attr.as_slice(), attribute);
    assert_eq!(got.as_slice(), value, "value changed in {rendered:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // "template\nvalue": the template as an operator might write it, the
    // value as a client might send it.
    let (template, value) = text.split_once('\n').unwrap_or((text, text));
    let values = Values {
        upn: value,
        login: value,
    };
    for required in [Placeholder::Upn, Placeholder::Login] {
        if let Ok(t) = Template::filter(template, required) {
            let _ = t.render(values);
            let _ = t.render_any();
        }
    }
    if let Ok(t) = Template::bind_name(template) {
        let _ = t.render(values);
    }
    let _ = Template::fixed_filter(template);

    let uid = Template::filter("(uid={login})", Placeholder::Login).expect("a valid template");
    one_equality(&uid.render(values), b"uid", value.as_bytes());
    let upn = Template::filter("(userPrincipalName={upn})", Placeholder::Upn).expect("a valid template");
    one_equality(&upn.render(values), b"userPrincipalName", value.as_bytes());
});
