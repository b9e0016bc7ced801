use super::*;

const SECRET: &[u8] = b"app-secret-0123456789";
const NOW: u64 = 1_800_000_000;

fn token(stream: &str, mode: Mode, ttl: u64) -> String {
    match mint(SECRET, "app1", stream, mode, Duration::from_secs(ttl), NOW) {
        Ok(m) => m.token,
        Err(e) => panic!("mint: {e}"),
    }
}

/// HS256-signs any JSON payload with `secret`, as a forger holding the secret could.
fn sign_raw(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_else(|e| panic!("encode: {e}"))
}

/// `(header, payload, signature)` of a compact JWT.
fn parts(token: &str) -> (&str, &str, &str) {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => panic!("not a compact JWT: {token}"),
    }
}

#[test]
fn a_minted_token_verifies_with_its_claims() {
    let m = mint(
        SECRET,
        "app1",
        "cam",
        Mode::Publish,
        Duration::from_secs(600),
        NOW,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        m.claims,
        Claims {
            app: "app1".into(),
            stream: "cam".into(),
            mode: Mode::Publish,
            iat: NOW,
            exp: NOW + 600,
        }
    );
    assert_eq!(verify(SECRET, "app1", &m.token, NOW + 10), Ok(m.claims));
    // A three-part compact JWT whose header names HS256.
    parts(&m.token);
    let header = jsonwebtoken::decode_header(&m.token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(header.alg, Algorithm::HS256);
}

#[test]
fn expiry_allows_the_documented_clock_skew_and_no_more() {
    let t = token("cam", Mode::Both, 60);
    let exp = NOW + 60;
    let skew = CLOCK_SKEW.as_secs();
    assert!(verify(SECRET, "app1", &t, exp).is_ok());
    assert!(verify(SECRET, "app1", &t, exp + skew).is_ok());
    let e = verify(SECRET, "app1", &t, exp + skew + 1).expect_err("refused");
    assert_eq!(e, TokenError::Expired);
    assert_eq!(e.status(), 401);
    // Minted on a host whose clock runs ahead.
    assert!(verify(SECRET, "app1", &t, NOW - skew).is_ok());
    assert_eq!(
        verify(SECRET, "app1", &t, NOW - skew - 1),
        Err(TokenError::NotYetValid)
    );
}

#[test]
fn another_secret_or_a_changed_payload_fails_the_signature() {
    let t = token("cam", Mode::Subscribe, 600);
    let e = verify(b"another-secret", "app1", &t, NOW).expect_err("refused");
    assert_eq!(e, TokenError::BadSignature);
    assert_eq!(e.status(), 401);

    // The payload of a token for every stream under the signature of one for "cam".
    let (h, _, s) = parts(&t);
    let wide = sign_raw(
        b"whatever",
        &serde_json::json!({"app": "app1", "stream": "*", "mode": "both", "iat": NOW, "exp": NOW + 600}),
    );
    let (_, p, _) = parts(&wide);
    let forged = format!("{h}.{p}.{s}");
    assert_eq!(
        verify(SECRET, "app1", &forged, NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn a_token_of_another_app_is_refused_even_under_the_same_secret() {
    let t = token("cam", Mode::Publish, 600);
    let e = verify(SECRET, "app2", &t, NOW).expect_err("refused");
    assert_eq!(e, TokenError::WrongApp);
    assert_eq!(e.status(), 401);
}

#[test]
fn stream_scope_is_a_name_or_every_stream() {
    let named = verify(SECRET, "app1", &token("cam", Mode::Both, 600), NOW)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(named.check_scope("cam", Mode::Publish), Ok(()));
    let e = named
        .check_scope("cam2", Mode::Publish)
        .expect_err("refused");
    assert_eq!(e, TokenError::WrongStream);
    assert_eq!(e.status(), 403);
    // Names are compared exactly.
    assert!(named.check_scope("Cam", Mode::Publish).is_err());
    assert!(named.check_scope("*", Mode::Publish).is_err());

    let any = verify(SECRET, "app1", &token(ANY_STREAM, Mode::Both, 600), NOW)
        .unwrap_or_else(|e| panic!("{e}"));
    for s in ["cam", "cam2", "a/b", "*"] {
        assert_eq!(any.check_scope(s, Mode::Subscribe), Ok(()), "{s}");
    }
}

#[test]
fn mode_grants_exactly_what_it_names() {
    use Mode::*;
    let cases = [
        (Publish, Publish, true),
        (Publish, Subscribe, false),
        (Publish, Both, false),
        (Subscribe, Subscribe, true),
        (Subscribe, Publish, false),
        (Subscribe, Both, false),
        (Both, Publish, true),
        (Both, Subscribe, true),
        (Both, Both, true),
    ];
    for (granted, wanted, ok) in cases {
        let claims = verify(SECRET, "app1", &token("cam", granted, 600), NOW)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = claims.check_scope("cam", wanted);
        if ok {
            assert_eq!(got, Ok(()), "{granted} → {wanted}");
        } else {
            let e = got.expect_err("refused");
            assert_eq!(e, TokenError::WrongMode { granted, wanted });
            assert_eq!(e.status(), 403);
        }
    }
}

#[test]
fn oversize_empty_and_garbage_bearers_are_401() {
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(verify(SECRET, "app1", &long, NOW), Err(TokenError::TooLong));
    // A real token padded past the bound is refused on its length alone.
    let padded = format!(
        "{}{}",
        token("cam", Mode::Both, 600),
        "A".repeat(MAX_TOKEN_LEN)
    );
    assert_eq!(
        verify(SECRET, "app1", &padded, NOW),
        Err(TokenError::TooLong)
    );
    assert_eq!(verify(SECRET, "app1", "", NOW), Err(TokenError::Missing));
    for junk in ["x", "a.b.c", "....", "eyJ.eyJ.", "é.é.é"] {
        let e = verify(SECRET, "app1", junk, NOW).expect_err("refused");
        assert!(matches!(e, TokenError::Malformed(_)), "{junk}: {e:?}");
        assert_eq!(e.status(), 401);
    }
}

#[test]
fn alg_none_and_every_other_algorithm_are_refused() {
    let t = token("cam", Mode::Both, 600);
    let (_, p, s) = parts(&t);
    // {"alg":"none","typ":"JWT"}, unsigned and with the HS256 signature left on.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    for forged in [format!("{none}.{p}."), format!("{none}.{p}.{s}")] {
        let e = verify(SECRET, "app1", &forged, NOW).expect_err("refused");
        assert!(matches!(e, TokenError::Malformed(_)), "{forged}: {e:?}");
    }
    // {"alg":"RS256","typ":"JWT"}: the key-confusion shape.
    let rs = format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{p}.{s}");
    assert!(matches!(
        verify(SECRET, "app1", &rs, NOW),
        Err(TokenError::Malformed(_))
    ));
    // Correctly signed with the app secret, but HS512.
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &serde_json::json!({"app": "app1", "stream": "cam", "mode": "both", "iat": NOW, "exp": NOW + 600}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        verify(SECRET, "app1", &hs512, NOW),
        Err(TokenError::Malformed("only HS256 is accepted"))
    );
}

#[test]
fn signed_tokens_of_the_wrong_shape_are_refused() {
    let base = serde_json::json!({"app": "app1", "stream": "cam", "mode": "both", "iat": NOW, "exp": NOW + 600});
    assert!(verify(SECRET, "app1", &sign_raw(SECRET, &base), NOW).is_ok());
    let mut variants = Vec::new();
    for key in ["app", "stream", "mode", "iat", "exp"] {
        let mut v = base.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove(key);
        }
        variants.push(v);
    }
    let mut bad_mode = base.clone();
    bad_mode["mode"] = "admin".into();
    variants.push(bad_mode);
    // Longer than the longest lifetime we mint, or ending before it starts.
    let mut long_life = base.clone();
    long_life["exp"] = (NOW + MAX_TTL.as_secs() + 1).into();
    variants.push(long_life);
    let mut backwards = base.clone();
    backwards["exp"] = NOW.into();
    variants.push(backwards);
    for v in variants {
        let e = verify(SECRET, "app1", &sign_raw(SECRET, &v), NOW).expect_err("refused");
        assert!(matches!(e, TokenError::Malformed(_)), "{v}: {e:?}");
    }
}

#[test]
fn an_empty_app_secret_verifies_nothing_and_mints_nothing() {
    let claims = serde_json::json!({"app": "app1", "stream": "*", "mode": "both", "iat": NOW, "exp": NOW + 600});
    let t = sign_raw(b"", &claims);
    assert_eq!(verify(b"", "app1", &t, NOW), Err(TokenError::BadSignature));
    assert_eq!(
        mint(b"", "app1", "cam", Mode::Both, DEFAULT_TTL, NOW),
        Err(MintError::EmptySecret)
    );
}

#[test]
fn minting_checks_its_bounds() {
    let m = |app: &str, stream: &str, ttl: u64| {
        mint(
            SECRET,
            app,
            stream,
            Mode::Both,
            Duration::from_secs(ttl),
            NOW,
        )
    };
    assert_eq!(m("app1", "cam", 0), Err(MintError::Ttl));
    assert_eq!(m("app1", "cam", MAX_TTL.as_secs() + 1), Err(MintError::Ttl));
    assert!(m("app1", "cam", MAX_TTL.as_secs()).is_ok());
    assert!(m("app1", "cam", 1).is_ok());
    let long = "s".repeat(MAX_NAME_LEN + 1);
    assert_eq!(m("app1", "", 60), Err(MintError::BadName("stream name")));
    assert_eq!(m("app1", &long, 60), Err(MintError::BadName("stream name")));
    assert_eq!(
        m("app1", "a\nb", 60),
        Err(MintError::BadName("stream name"))
    );
    assert_eq!(m("", "cam", 60), Err(MintError::BadName("app id")));
    // The longest names still give a token under the length bound, and it verifies.
    let max = "é".repeat(MAX_NAME_LEN / 2);
    let t = m(&max, &max, 60).unwrap_or_else(|e| panic!("{e}"));
    assert!(t.token.len() <= MAX_TOKEN_LEN, "{}", t.token.len());
    assert!(verify(SECRET, &max, &t.token, NOW).is_ok());
    let quotes = "\"\\".repeat(MAX_NAME_LEN / 2);
    let t = m(&quotes, &quotes, 60).unwrap_or_else(|e| panic!("{e}"));
    assert!(t.token.len() <= MAX_TOKEN_LEN, "{}", t.token.len());
}

#[test]
fn modes_parse_and_serialize_by_their_lowercase_names() {
    for mode in [Mode::Publish, Mode::Subscribe, Mode::Both] {
        assert_eq!(mode.as_str().parse::<Mode>(), Ok(mode));
        assert_eq!(
            serde_json::to_string(&mode).unwrap_or_default(),
            format!("\"{mode}\"")
        );
    }
    assert!("Publish".parse::<Mode>().is_err());
    assert!("".parse::<Mode>().is_err());
}

#[test]
fn rfc3339_of_known_instants() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
}
