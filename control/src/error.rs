//! What can go wrong, and the exit code for each.

use std::fmt;

/// Exit codes of `trackmeshctl`.
pub mod exit {
    pub const OK: i32 = 0;
    /// The command ran but the answer is negative (not found, not ready, an API error).
    pub const NEGATIVE: i32 = 1;
    /// Usage error (clap's code); `health` also uses it for an unreachable node.
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
    pub const UNAUTHORIZED: i32 = 4;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlError {
    /// No HTTP answer at all (refused, timed out, reset, bad host).
    Unreachable { url: String, reason: String },
    /// 401 from the admin API.
    Unauthorized {
        url: String,
        code: Option<String>,
        description: Option<String>,
    },
    /// 401 from the app API: a wrong or missing app secret (`token --node`).
    AppUnauthorized {
        url: String,
        code: Option<String>,
        description: Option<String>,
    },
    /// Any other non-2xx answer.
    Api {
        method: String,
        path: String,
        status: u16,
        code: Option<String>,
        description: Option<String>,
        /// The body, when it was not a JSON error object (shortened).
        raw: String,
    },
    /// A 2xx answer we could not make sense of.
    BadAnswer { path: String, reason: String },
    /// The command worked, the answer is "no" (message for stderr).
    Negative(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Unreachable { .. } => exit::UNREACHABLE,
            CtlError::Unauthorized { .. } | CtlError::AppUnauthorized { .. } => exit::UNAUTHORIZED,
            CtlError::Api { .. } | CtlError::BadAnswer { .. } | CtlError::Negative(_) => {
                exit::NEGATIVE
            }
        }
    }
}

fn code_and_description(code: &Option<String>, description: &Option<String>) -> String {
    match (code, description) {
        (Some(c), Some(d)) => format!("{c}: {d}"),
        (Some(c), None) => c.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => String::new(),
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Unreachable { url, reason } => {
                write!(f, "cannot reach {url}: {reason}")
            }
            CtlError::Unauthorized {
                url,
                code,
                description,
            } => {
                let detail = code_and_description(code, description);
                write!(f, "unauthorized by {url}")?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                write!(
                    f,
                    "\nhint: pass the node's admin token (its --admin-token) with --token T \
                     or in the environment variable TRACKMESH_ADMIN_TOKEN"
                )
            }
            CtlError::AppUnauthorized {
                url,
                code,
                description,
            } => {
                let detail = code_and_description(code, description);
                write!(f, "unauthorized by {url}")?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                write!(
                    f,
                    "\nhint: --secret (or TRACKMESH_APP_SECRET) must be the app's secret on that node"
                )
            }
            CtlError::Api {
                method,
                path,
                status,
                code,
                description,
                raw,
            } => {
                write!(f, "{method} {path}: HTTP {status}")?;
                let detail = code_and_description(code, description);
                if !detail.is_empty() {
                    write!(f, ": {detail}")
                } else if !raw.is_empty() {
                    write!(f, ": {raw}")
                } else {
                    Ok(())
                }
            }
            CtlError::BadAnswer { path, reason } => {
                write!(f, "unexpected answer to {path}: {reason}")
            }
            CtlError::Negative(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CtlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_messages() {
        let e = CtlError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "cannot reach http://127.0.0.1:1: connection refused"
        );

        let e = CtlError::Unauthorized {
            url: "http://n".into(),
            code: Some("unauthorized".into()),
            description: Some("missing or wrong admin token".into()),
        };
        assert_eq!(e.exit_code(), 4);
        let s = e.to_string();
        assert!(s.contains("missing or wrong admin token"), "{s}");
        assert!(
            s.contains("--token") && s.contains("TRACKMESH_ADMIN_TOKEN"),
            "{s}"
        );

        let e = CtlError::Api {
            method: "GET".into(),
            path: "/admin/sessions/x".into(),
            status: 404,
            code: Some("not_found".into()),
            description: Some("no session x".into()),
            raw: String::new(),
        };
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "GET /admin/sessions/x: HTTP 404: not_found: no session x"
        );

        let e = CtlError::Api {
            method: "GET".into(),
            path: "/admin/tracks".into(),
            status: 502,
            code: None,
            description: None,
            raw: "Bad Gateway".into(),
        };
        assert_eq!(e.to_string(), "GET /admin/tracks: HTTP 502: Bad Gateway");
        assert_eq!(CtlError::Negative("no".into()).exit_code(), 1);

        let e = CtlError::AppUnauthorized {
            url: "http://n".into(),
            code: Some("unauthorized".into()),
            description: None,
        };
        assert_eq!(e.exit_code(), 4);
        let s = e.to_string();
        assert!(s.contains("--secret") && !s.contains("--token"), "{s}");
    }
}
