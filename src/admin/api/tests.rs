use super::*;

/// Every path and method of the document, as `(METHOD, path)`.
fn documented() -> Vec<(String, String)> {
    let doc = serde_json::to_value(document()).unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                out.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let mut routed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    routed.sort();
    assert_eq!(documented(), routed);
}

#[test]
fn every_operation_documents_the_common_errors_and_the_bearer_scheme() {
    let doc = serde_json::to_value(document()).unwrap();
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    for (method, path) in documented() {
        let op = &doc["paths"][&path][method.to_lowercase()];
        for status in ["400", "401", "413", "415", "500", "503"] {
            assert!(op["responses"][status].is_object(), "{method} {path} lacks {status}");
        }
    }
}

#[test]
fn paths_match_with_their_parts_decoded() {
    match find(&Method::DELETE, "/api/v1/users/a%40x.org/app-passwords/my%20phone") {
        Found::Route(route, params) => {
            assert_eq!(route.path, "/api/v1/users/{upn}/app-passwords/{name}");
            assert_eq!(params, ["a@x.org", "my phone"]);
        }
        _ => panic!("not routed"),
    }
    match find(&Method::PATCH, "/api/v1/users") {
        Found::WrongMethod(methods) => assert_eq!(methods, [&Method::GET, &Method::POST]),
        _ => panic!("expected a wrong method"),
    }
    assert!(matches!(find(&Method::GET, "/api/v1/nothing"), Found::None));
    assert!(matches!(find(&Method::GET, "/api/v1/users//state"), Found::None));
}

#[test]
fn statuses_are_chosen_in_one_place() {
    let cases: Vec<(ApiError, u16, &str)> = vec![
        (
            ManageError::UnknownUser { upn: "a@x.org".into() }.into(),
            404,
            "unknown_user",
        ),
        (
            ManageError::UserExists { upn: "a@x.org".into() }.into(),
            409,
            "user_exists",
        ),
        (
            ManageError::BadState {
                field: "state".into(),
                message: "m".into(),
            }
            .into(),
            400,
            "bad_state",
        ),
        (
            ManageError::BulkRejected { errors: vec![] }.into(),
            422,
            "bulk_rejected",
        ),
        (
            ManageError::StoreUnavailable("down".into()).into(),
            503,
            "store_unavailable",
        ),
        (ApiError::Unauthorized, 401, "unauthorized"),
        (ApiError::UnsupportedMediaType, 415, "unsupported_media_type"),
        (ApiError::PayloadTooLarge, 413, "payload_too_large"),
    ];
    for (err, status, code) in cases {
        assert_eq!(err.status().as_u16(), status, "{err}");
        assert_eq!(err.body().error, code);
    }
    let internal = ApiError::from(ManageError::Internal("secret detail".into()));
    assert!(!internal.body().message.contains("secret detail"));
}
