//! `application/trickle-ice-sdpfrag` (RFC 8840), as WHIP/WHEP `PATCH` carries it: ICE
//! credentials (new ones mean an ICE restart) and candidates. Read before it reaches the engine,
//! bounded: what the engine gets is a few strings and at most [`MAX_CANDIDATES`] candidates.

use str0m::Candidate;

/// Most candidates one PATCH may carry, and one session may be sent in all.
pub const MAX_CANDIDATES: usize = 64;
/// Longest ICE ufrag or password accepted (RFC 8839 allows 256 characters).
const MAX_CRED_LEN: usize = 256;

/// A parsed sdpfrag.
#[derive(Debug, Clone, Default)]
pub struct IceFrag {
    /// `a=ice-ufrag` and `a=ice-pwd`, when both are present.
    pub creds: Option<(String, String)>,
    /// The candidates, in order.
    pub candidates: Vec<Candidate>,
}

/// Reads an sdpfrag. Unknown lines (`m=`, `a=mid`, `a=end-of-candidates`, ...) are skipped; a
/// candidate that does not parse, a ufrag without a password or too many candidates is an error.
pub fn parse(text: &str) -> Result<IceFrag, String> {
    let mut frag = IceFrag::default();
    let (mut ufrag, mut pwd) = (None, None);
    for line in text.lines().map(str::trim_end) {
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(cred(v, "ice-ufrag")?);
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            pwd = Some(cred(v, "ice-pwd")?);
        } else if let Some(c) = line.strip_prefix("a=candidate:") {
            if frag.candidates.len() >= MAX_CANDIDATES {
                return Err(format!("more than {MAX_CANDIDATES} candidates"));
            }
            let c = Candidate::from_sdp_string(&format!("candidate:{c}"))
                .map_err(|_| "a candidate line does not parse".to_string())?;
            frag.candidates.push(c);
        }
    }
    frag.creds = match (ufrag, pwd) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => return Err("ice-ufrag and ice-pwd come together".into()),
    };
    Ok(frag)
}

fn cred(v: &str, what: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() || v.len() > MAX_CRED_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} must be 1 to {MAX_CRED_LEN} printable characters"
        ));
    }
    Ok(v.to_string())
}

/// The server's sdpfrag after an ICE restart: its new credentials and its candidates.
pub fn answer(ufrag: &str, pwd: &str, candidates: &[String]) -> String {
    let mut out = format!("a=ice-lite\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    for c in candidates {
        out.push_str("a=");
        out.push_str(c);
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_credentials_and_candidates() {
        let f = parse(
            "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
             a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
             a=end-of-candidates\r\n",
        )
        .expect("parses");
        assert_eq!(
            f.creds,
            Some(("EsAw".into(), "P2uYro0UCOQ4zxjKXaWCBui1".into()))
        );
        assert_eq!(f.candidates.len(), 1);
        assert_eq!(f.candidates[0].addr().port(), 61764);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(parse("a=ice-ufrag:x\r\n").is_err(), "ufrag alone");
        assert!(parse("a=candidate:garbage\r\n").is_err());
        let many = "a=candidate:1 1 udp 1 192.0.2.1 9 typ host\r\n".repeat(MAX_CANDIDATES + 1);
        assert!(parse(&many).is_err());
        assert!(parse("").is_ok_and(|f| f.creds.is_none() && f.candidates.is_empty()));
    }
}
