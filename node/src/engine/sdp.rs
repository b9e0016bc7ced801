//! Text-level reading and small fixes of SDP, where str0m's model has no handle for it.

/// str0m lists the ICE candidates only in the first BUNDLE m-section. Some clients (aiortc) read
/// them only from the last one, so copy them into every m-section that has none and is not
/// rejected (port 0).
pub fn candidates_in_every_section(sdp: &str) -> String {
    let candidates: Vec<&str> = sdp
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    if candidates.is_empty() {
        return sdp.to_string();
    }
    let sections = split_sections(sdp);
    let mut out = String::with_capacity(sdp.len() + candidates.len() * 80 * sections.len());
    for section in &sections {
        for line in section {
            out.push_str(line);
            out.push_str("\r\n");
        }
        let is_media = section.first().is_some_and(|l| l.starts_with("m="));
        let rejected = section
            .first()
            .is_some_and(|l| l.split(' ').nth(1) == Some("0"));
        let has_candidates = section.iter().any(|l| l.starts_with("a=candidate:"));
        if is_media && !rejected && !has_candidates {
            for c in &candidates {
                out.push_str(c);
                out.push_str("\r\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_candidates_to_live_sections_only() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2130706175 127.0.0.1 7701 typ host\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\n";
        let out = candidates_in_every_section(sdp);
        let sections: Vec<&str> = out.split("m=").collect();
        assert_eq!(sections.len(), 4);
        assert!(!sections[0].contains("a=candidate"), "not at session level");
        assert_eq!(sections[1].matches("a=candidate").count(), 1);
        assert_eq!(
            sections[2].matches("a=candidate").count(),
            1,
            "copied into mid 1"
        );
        assert_eq!(
            sections[3].matches("a=candidate").count(),
            0,
            "rejected section untouched"
        );
        assert!(out.ends_with("\r\n"));
    }

    #[test]
    fn no_candidates_means_no_change() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";
        assert_eq!(candidates_in_every_section(sdp), sdp);
    }
}

/// One m-section of an SDP as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    pub mid: String,
    /// The client sends on it (`sendonly` or `sendrecv`, the default).
    pub client_sends: bool,
    /// Port 0: the section is rejected or stopped.
    pub rejected: bool,
}

/// The media m-sections of an SDP, in order (data channels are skipped).
pub fn media_sections(sdp: &str) -> Vec<OfferedMedia> {
    let mut out: Vec<OfferedMedia> = Vec::new();
    let mut in_media = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split(' ');
            let kind = parts.next().unwrap_or("");
            in_media = kind == "audio" || kind == "video";
            if in_media {
                out.push(OfferedMedia {
                    mid: String::new(),
                    client_sends: true,
                    rejected: parts.next() == Some("0"),
                });
            }
            continue;
        }
        if !in_media {
            continue;
        }
        let Some(cur) = out.last_mut() else {
            continue;
        };
        match line {
            "a=recvonly" | "a=inactive" => cur.client_sends = false,
            "a=sendonly" | "a=sendrecv" => cur.client_sends = true,
            _ => {
                if let Some(mid) = line.strip_prefix("a=mid:") {
                    cur.mid = mid.to_string();
                }
            }
        }
    }
    out
}

/// Whether the SDP opens an SCTP (`m=application`, port not 0) section: the older Calls flow,
/// where the client's offer to `sessions/new` carries a `server-events` DataChannel.
pub fn has_data_section(sdp: &str) -> bool {
    sdp.lines().any(|l| {
        l.strip_prefix("m=application ")
            .is_some_and(|rest| !rest.starts_with("0 "))
    })
}

/// Calls rejects descriptions without ICE credentials as undecodable.
pub fn has_ice_ufrag(sdp: &str) -> bool {
    sdp.lines().any(|l| l.starts_with("a=ice-ufrag:"))
}

/// The SDP without ICE credentials in rejected (port 0) sections. Chromium leaves a stopped
/// section with its old transport's credentials when it moved to a new transport, and str0m
/// takes the first section's credentials for the whole session: it would keep the old ones.
/// Unchanged (borrowed) when no rejected section carries credentials, or no other place does
/// (every section stopped: the old credentials are all there is).
pub fn drop_rejected_creds(sdp: &str) -> std::borrow::Cow<'_, str> {
    let is_cred = |l: &str| l.starts_with("a=ice-ufrag:") || l.starts_with("a=ice-pwd:");
    // Before the first m= line, "rejected" is false: session-level credentials count as live.
    let mut rejected = false;
    let (mut in_rejected, mut elsewhere) = (false, false);
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            rejected = m.split(' ').nth(1) == Some("0");
        } else if is_cred(line) {
            if rejected {
                in_rejected = true;
            } else {
                elsewhere = true;
            }
        }
    }
    if !(in_rejected && elsewhere) {
        return std::borrow::Cow::Borrowed(sdp);
    }
    let mut out = String::with_capacity(sdp.len());
    rejected = false;
    for line in sdp.split_inclusive('\n') {
        if let Some(m) = line.strip_prefix("m=") {
            rejected = m.split(' ').nth(1) == Some("0");
        } else if rejected && is_cred(line) {
            continue;
        }
        out.push_str(line);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod section_tests {
    use super::*;

    #[test]
    fn a_rejected_sections_old_credentials_are_dropped() {
        let sdp = "v=0\r\nm=video 0 UDP 96\r\na=ice-ufrag:old\r\na=ice-pwd:oldpass\r\na=mid:0\r\n\
                   m=audio 9 UDP 111\r\na=ice-ufrag:new\r\na=ice-pwd:newpass\r\na=mid:1\r\n";
        let out = drop_rejected_creds(sdp);
        assert!(!out.contains("old"), "{out}");
        assert!(out.contains("a=ice-ufrag:new\r\na=ice-pwd:newpass\r\na=mid:1\r\n"));
        assert!(out.contains("m=video 0 UDP 96\r\na=mid:0\r\n"));
        let live = "v=0\r\nm=audio 9 UDP 111\r\na=ice-ufrag:u\r\n";
        assert!(matches!(
            drop_rejected_creds(live),
            std::borrow::Cow::Borrowed(_)
        ));
        let all_stopped = "v=0\r\nm=audio 0 UDP 111\r\na=ice-ufrag:u\r\n";
        assert_eq!(
            drop_rejected_creds(all_stopped),
            all_stopped,
            "nothing else to take"
        );
    }

    #[test]
    fn lists_media_sections_with_direction() {
        let sdp = "v=0\r\na=ice-ufrag:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=recvonly\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\n";
        let s = media_sections(sdp);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].mid.as_str(), s[0].client_sends, s[0].rejected),
            ("0", true, false)
        );
        assert_eq!((s[1].mid.as_str(), s[1].client_sends), ("1", false));
        assert_eq!((s[2].mid.as_str(), s[2].rejected), ("3", true));
        assert!(has_ice_ufrag(sdp));
        assert!(!has_ice_ufrag("v=0\r\nm=audio 9 X 0\r\n"));
    }
}

/// Rewrites the direction of the listed mids to `inactive`. `tracks/close` acts on the mids in
/// its body even when the client's offer still shows them active (partytracks does this); the
/// answer then says `inactive` too, so the client stops sending what the node would drop.
pub fn set_inactive(sdp: &str, mids: &[String]) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    let sections = split_sections(sdp);
    for section in sections {
        let listed = section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .is_some_and(|mid| mids.iter().any(|m| m == mid));
        let mut has_direction = false;
        for line in &section {
            let is_direction = matches!(
                *line,
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            );
            if listed && is_direction {
                has_direction = true;
                out.push_str("a=inactive\r\n");
            } else {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        // No direction attribute means sendrecv: add an explicit one.
        if listed && !has_direction {
            out.push_str("a=inactive\r\n");
        }
    }
    out
}

/// The session part followed by one chunk per m-section, lines without their endings.
fn split_sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(line);
        }
    }
    sections
}

#[cfg(test)]
mod inactive_tests {
    use super::*;

    #[test]
    fn listed_mids_become_inactive() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=sendonly\r\nm=video 9 X 96\r\na=mid:1\r\na=recvonly\r\n\
                   m=video 9 X 96\r\na=mid:2\r\n";
        let out = set_inactive(sdp, &["1".to_string(), "2".to_string()]);
        let s = media_sections(&out);
        assert!(s[0].client_sends, "mid 0 untouched");
        assert!(!s[1].client_sends && !s[2].client_sends);
        assert_eq!(out.matches("a=inactive").count(), 2);
        assert!(out.contains("a=sendonly"));
    }
}

/// The transport-wide sequence number extension (TWCC), as browsers and str0m name it.
const TWCC_URI: &str = "transport-wide-cc-extensions-01";

/// The SDP without the TWCC extension in media sections where the client only receives
/// (`recvonly` or `inactive`), so those sections stay as they are otherwise.
///
/// str0m keeps a record of each packet it sends with a transport-wide sequence number, the last
/// 1,000 per session (`TwccSendRegister`, not configurable): for a subscriber that is about
/// 60–120 KB once 1,000 packets went out, and every such packet brings transport-cc feedback
/// the node must decrypt and parse. Only bandwidth estimation on the subscriber's leg
/// (`--bwe`) reads that feedback, so without it the extension is dropped where the node only
/// sends. The client's sending sections keep it: the client's own bandwidth estimation needs
/// the node's feedback on what it publishes. str0m takes a section's extensions from the
/// client's SDP (offer or answer), so this is where they are chosen.
pub fn drop_twcc_where_client_only_receives(sdp: &str) -> std::borrow::Cow<'_, str> {
    let is_twcc = |l: &str| l.starts_with("a=extmap:") && l.trim_end().ends_with(TWCC_URI);
    if !sdp.lines().any(is_twcc) {
        return std::borrow::Cow::Borrowed(sdp);
    }
    let receive_only: Vec<bool> = split_sections(sdp)
        .iter()
        .map(|s| {
            s.first().is_some_and(|l| l.starts_with("m="))
                && s.iter().any(|l| matches!(*l, "a=recvonly" | "a=inactive"))
        })
        .collect();
    let mut out = String::with_capacity(sdp.len());
    let mut section = 0;
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            section += 1;
        }
        if is_twcc(line) && receive_only.get(section).copied().unwrap_or(false) {
            continue;
        }
        out.push_str(line);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod twcc_tests {
    use super::*;

    const TWCC: &str =
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";

    #[test]
    fn twcc_is_dropped_only_where_the_client_only_receives() {
        let sdp = format!(
            "v=0\r\na=ice-ufrag:x\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n{TWCC}a=sendonly\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n{TWCC}a=recvonly\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\n{TWCC}\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\n{TWCC}a=inactive\r\n"
        );
        let out = drop_twcc_where_client_only_receives(&sdp);
        let sections: Vec<&str> = out.split("m=").collect();
        assert_eq!(sections.len(), 5);
        assert!(
            sections[1].contains("transport-wide-cc"),
            "sendonly keeps it"
        );
        assert!(
            !sections[2].contains("transport-wide-cc"),
            "recvonly drops it"
        );
        assert!(
            sections[3].contains("transport-wide-cc"),
            "no direction is sendrecv: keeps it"
        );
        assert!(
            !sections[4].contains("transport-wide-cc"),
            "inactive drops it"
        );
        assert!(
            out.contains("a=mid:1\r\na=recvonly\r\n"),
            "the rest untouched"
        );
    }

    #[test]
    fn an_sdp_without_twcc_is_not_copied() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=recvonly\r\n";
        assert!(matches!(
            drop_twcc_where_client_only_receives(sdp),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
