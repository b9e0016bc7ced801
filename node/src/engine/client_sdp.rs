//! A client's SDP, parsed before it reaches the engine.
//!
//! Parsing a large SDP costs milliseconds, and the engine task that applies it also forwards all
//! media, so the API parses on its own task and hands the engine the result. A parse error is
//! carried, not returned at once, so the engine reports it at the same point as before (an unknown
//! session is still a 404 before a bad SDP is a 400).

use str0m::change::{SdpAnswer, SdpOffer};

use super::OpError;
use super::sdp::{
    OfferedMedia, drop_rejected_creds, drop_twcc_where_client_only_receives, has_data_section,
    has_ice_ufrag, media_sections, set_inactive,
};

/// Which of a client's media sections keep the transport-wide congestion control extension
/// (see [`drop_twcc_where_client_only_receives`] for what it costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Twcc {
    /// Every section: bandwidth estimation on the subscribers' legs (`--bwe`) needs it.
    Everywhere,
    /// Only the sections the client sends on.
    WhereClientSends,
}

impl Twcc {
    /// What a node with (`--bwe`) or without bandwidth estimation needs.
    pub fn for_bwe(bwe: bool) -> Twcc {
        if bwe {
            Twcc::Everywhere
        } else {
            Twcc::WhereClientSends
        }
    }

    fn apply(self, text: &str) -> std::borrow::Cow<'_, str> {
        match self {
            Twcc::Everywhere => std::borrow::Cow::Borrowed(text),
            Twcc::WhereClientSends => drop_twcc_where_client_only_receives(text),
        }
    }
}

/// A client's offer: its text (for what str0m's model does not show) and its parse.
#[derive(Debug)]
pub struct ClientOffer {
    pub(crate) sections: Vec<OfferedMedia>,
    pub(crate) parsed: Result<SdpOffer, OpError>,
    /// The client's ICE ufrag (WHIP/WHEP tell a trickle from an ICE restart by it).
    pub(crate) ice_ufrag: Option<String>,
    /// The client's DTLS fingerprint (a new one means a new DTLS transport).
    pub(crate) fingerprint: Option<String>,
    /// The text, when at most [`MAX_REMEMBERED_OFFER`] bytes: the session keeps its last offer
    /// to rebuild its sections on a fresh `Rtc` if the client drops its transport.
    pub(crate) text: Option<String>,
    /// It opens an SCTP section (DataChannels), as the older Calls flow does in `sessions/new`.
    pub(crate) data_section: bool,
}

/// Largest offer a session keeps (a browser's offer for a few tracks is a few KB).
pub const MAX_REMEMBERED_OFFER: usize = 32 * 1024;

impl ClientOffer {
    /// Reads an offer; a bad one is kept as its error, reported when an operation uses it.
    pub fn parse(text: &str) -> ClientOffer {
        ClientOffer::parse_for(text, Twcc::Everywhere)
    }

    /// Reads an offer, keeping the TWCC extension where `twcc` says.
    pub fn parse_for(text: &str, twcc: Twcc) -> ClientOffer {
        let text = drop_rejected_creds(text);
        let text = &*twcc.apply(&text);
        ClientOffer {
            sections: media_sections(text),
            parsed: parse_offer(text),
            ice_ufrag: attribute(text, "a=ice-ufrag:"),
            fingerprint: fingerprint(text),
            text: (text.len() <= MAX_REMEMBERED_OFFER).then(|| text.to_string()),
            data_section: has_data_section(text),
        }
    }

    /// The mids of the sections the offer keeps open (not port 0).
    pub(crate) fn live_mids(&self) -> impl Iterator<Item = &str> {
        self.sections
            .iter()
            .filter(|m| !m.rejected && !m.mid.is_empty())
            .map(|m| m.mid.as_str())
    }

    /// The offer of a `tracks/close`: the listed mids are made inactive first (the client may
    /// still show them active), so the answer says `inactive` too.
    pub fn parse_closing(text: &str, mids: &[String], twcc: Twcc) -> ClientOffer {
        ClientOffer::parse_for(&set_inactive(text, mids), twcc)
    }
}

impl From<&str> for ClientOffer {
    fn from(text: &str) -> ClientOffer {
        ClientOffer::parse(text)
    }
}

impl From<String> for ClientOffer {
    fn from(text: String) -> ClientOffer {
        ClientOffer::parse(&text)
    }
}

/// A client's answer to the SFU's offer.
#[derive(Debug)]
pub struct ClientAnswer {
    pub(crate) parsed: Result<SdpAnswer, OpError>,
    /// The client's ICE ufrag and DTLS fingerprint, remembered to spot a later transport change.
    pub(crate) ice_ufrag: Option<String>,
    pub(crate) fingerprint: Option<String>,
}

impl ClientAnswer {
    /// Reads an answer; a bad one is kept as its error, reported when `renegotiate` uses it.
    pub fn parse(text: &str) -> ClientAnswer {
        ClientAnswer::parse_for(text, Twcc::Everywhere)
    }

    /// Reads an answer, keeping the TWCC extension where `twcc` says.
    pub fn parse_for(text: &str, twcc: Twcc) -> ClientAnswer {
        let text = drop_rejected_creds(text);
        let text = &*twcc.apply(&text);
        let parsed = if has_ice_ufrag(text) {
            SdpAnswer::from_sdp_string(text).map_err(|e| {
                OpError::Decoding(format!("invalid SDP answer: {}", scrub(&e.to_string())))
            })
        } else {
            Err(OpError::Decoding("SDP contains no ice-ufrag".into()))
        };
        ClientAnswer {
            parsed,
            ice_ufrag: attribute(text, "a=ice-ufrag:"),
            fingerprint: fingerprint(text),
        }
    }
}

impl From<&str> for ClientAnswer {
    fn from(text: &str) -> ClientAnswer {
        ClientAnswer::parse(text)
    }
}

/// The first value of an attribute (session or media level), trimmed and bounded.
fn attribute(text: &str, prefix: &str) -> Option<String> {
    /// Longer values are not credentials or fingerprints a browser sends; compared only.
    const MAX_VALUE: usize = 256;
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix))
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_VALUE)
        .map(str::to_string)
}

/// The first `a=fingerprint`, normalised (hash name and hex are case-insensitive, RFC 8122).
fn fingerprint(text: &str) -> Option<String> {
    attribute(text, "a=fingerprint:").map(|v| v.to_ascii_lowercase())
}

fn parse_offer(sdp: &str) -> Result<SdpOffer, OpError> {
    if !has_ice_ufrag(sdp) {
        return Err(OpError::Decoding("SDP contains no ice-ufrag".into()));
    }
    SdpOffer::from_sdp_string(sdp)
        .map_err(|e| OpError::Decoding(format!("invalid SDP offer: {}", scrub(&e.to_string()))))
}

/// A parser's error text as a client may see it: no process addresses (str0m's parser reports
/// positions as pointers, `PointerOffset(0x55a7…)`), bounded length.
fn scrub(error: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(error.len().min(MAX));
    let mut rest = error;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 2..];
        let hex_len = tail
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(tail.len());
        out.push_str(if hex_len > 0 { "…" } else { "0x" });
        rest = &tail[hex_len..];
    }
    out.push_str(rest);
    let out = out.replace("PointerOffset(…)", "?");
    match out.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_no_addresses_and_are_bounded() {
        let s = scrub("Parse error at PointerOffset(0x55a7c0ffee10) expected 0x or 0xZ");
        assert!(!s.contains("55a7"), "{s}");
        assert!(s.contains("at ?"), "{s}");
        assert!(scrub(&"x".repeat(10_000)).chars().count() <= 201);
        let e = ClientOffer::parse("v=0\r\na=ice-ufrag:x\r\nm=video banana\r\n");
        let Err(OpError::Decoding(text)) = e.parsed else {
            panic!("a parse error");
        };
        assert!(!text.contains("0x"), "{text}");
    }
}
