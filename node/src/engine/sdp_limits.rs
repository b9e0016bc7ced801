//! Bounds an SDP must pass before str0m parses it.
//!
//! str0m's parser and offer handling grow faster than linearly with the number of `a=ssrc` lines
//! (40,000 of them cost seconds), and the engine task that applies an offer also forwards all
//! media. These bounds are checked on the API task, before the SDP reaches the engine; they sit far
//! above what a real client sends (a browser's offer with 64 tracks and simulcast is ~60 KB, with
//! about 12 `a=ssrc` lines per video section) and far below what costs the media path time.

use std::fmt;

/// Largest SDP accepted, in bytes.
pub const MAX_SDP_BYTES: usize = 256 * 1024;
/// Most lines in one SDP.
pub const MAX_SDP_LINES: usize = 8192;
/// Most m-sections: a session's 512 active tracks, plus one data section.
pub const MAX_M_LINES: usize = 513;
/// Most `a=ssrc:` and `a=ssrc-group:` lines in one m-section (simulcast with RTX and FEC needs ~20).
pub const MAX_SSRC_LINES_PER_SECTION: usize = 64;
/// Most `a=ssrc:` and `a=ssrc-group:` lines in one SDP.
pub const MAX_SSRC_LINES: usize = 2048;
/// Longest line (fingerprints, candidates and fmtp lines are a few hundred bytes at most).
pub const MAX_LINE_BYTES: usize = 4096;

/// The bound an SDP broke; its text names the limit, for the 400 the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdpBound {
    /// Over [`MAX_SDP_BYTES`]; carries the SDP's size.
    Size(usize),
    /// Over [`MAX_SDP_LINES`].
    Lines,
    /// Over [`MAX_M_LINES`].
    MLines,
    /// One m-section over [`MAX_SSRC_LINES_PER_SECTION`].
    SsrcLinesInSection,
    /// The whole SDP over [`MAX_SSRC_LINES`].
    SsrcLines,
    /// A line over [`MAX_LINE_BYTES`].
    LineLength {
        /// Its 1-based line number, so the client can find it.
        line: usize,
    },
}

impl fmt::Display for SdpBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdpBound::Size(n) => write!(
                f,
                "SDP of {n} bytes is over the limit of {MAX_SDP_BYTES} bytes"
            ),
            SdpBound::Lines => write!(f, "SDP has more than {MAX_SDP_LINES} lines"),
            SdpBound::MLines => write!(f, "SDP has more than {MAX_M_LINES} m-sections"),
            SdpBound::SsrcLinesInSection => write!(
                f,
                "an m-section has more than {MAX_SSRC_LINES_PER_SECTION} a=ssrc/a=ssrc-group lines"
            ),
            SdpBound::SsrcLines => write!(
                f,
                "SDP has more than {MAX_SSRC_LINES} a=ssrc/a=ssrc-group lines"
            ),
            SdpBound::LineLength { line } => {
                write!(f, "SDP line {line} is longer than {MAX_LINE_BYTES} bytes")
            }
        }
    }
}

/// Checks every bound in one pass; stops at the first one broken.
pub fn check(sdp: &str) -> Result<(), SdpBound> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(SdpBound::Size(sdp.len()));
    }
    let (mut m_lines, mut ssrc_total, mut ssrc_section) = (0usize, 0usize, 0usize);
    for (i, line) in sdp.lines().enumerate() {
        if i >= MAX_SDP_LINES {
            return Err(SdpBound::Lines);
        }
        if line.len() > MAX_LINE_BYTES {
            return Err(SdpBound::LineLength { line: i + 1 });
        }
        if line.starts_with("m=") {
            m_lines += 1;
            ssrc_section = 0;
            if m_lines > MAX_M_LINES {
                return Err(SdpBound::MLines);
            }
        } else if line.starts_with("a=ssrc") {
            ssrc_section += 1;
            ssrc_total += 1;
            if ssrc_section > MAX_SSRC_LINES_PER_SECTION {
                return Err(SdpBound::SsrcLinesInSection);
            }
            if ssrc_total > MAX_SSRC_LINES {
                return Err(SdpBound::SsrcLines);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\n";

    #[test]
    fn a_browser_sized_offer_passes() {
        let mut sdp = HEAD.to_string();
        for mid in 0..64 {
            sdp.push_str(&format!(
                "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:{mid}\r\n"
            ));
            for s in 0..12 {
                sdp.push_str(&format!("a=ssrc:{s} cname:x\r\n"));
            }
        }
        assert_eq!(check(&sdp), Ok(()));
    }

    #[test]
    fn each_bound_is_named() {
        let many_ssrc = format!(
            "{HEAD}m=audio 9 X 111\r\n{}",
            "a=ssrc:1 cname:x\r\n".repeat(40_000)
        );
        assert_eq!(check(&many_ssrc), Err(SdpBound::Size(many_ssrc.len())));
        let section = format!("{HEAD}m=audio 9 X 111\r\n{}", "a=ssrc:1 c:x\r\n".repeat(65));
        assert_eq!(check(&section), Err(SdpBound::SsrcLinesInSection));
        let spread: String = (0..100)
            .map(|m| {
                format!(
                    "m=audio 9 X 111\r\na=mid:{m}\r\n{}",
                    "a=ssrc:1 c:x\r\n".repeat(30)
                )
            })
            .collect();
        assert_eq!(check(&format!("{HEAD}{spread}")), Err(SdpBound::SsrcLines));
        let m_lines = format!("{HEAD}{}", "m=audio 9 X 111\r\n".repeat(600));
        assert_eq!(check(&m_lines), Err(SdpBound::MLines));
        let long = format!("{HEAD}a=x:{}\r\n", "y".repeat(5000));
        assert_eq!(check(&long), Err(SdpBound::LineLength { line: 6 }));
        let lines = format!("{HEAD}{}", "a=x\r\n".repeat(9000));
        assert_eq!(check(&lines), Err(SdpBound::Lines));
        assert!(SdpBound::SsrcLines.to_string().contains("2048"));
    }
}
