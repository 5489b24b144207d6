//! The cleartext connection initiation: X.224 Connection Request (client) and Connection
//! Confirm (server) with the RDP negotiation structures ([MS-RDPBCGR] 2.2.1.1, 2.2.1.2).

use ironrdp_core::{decode, encode_vec};
use ironrdp_pdu::nego::{
    ConnectionConfirm, ConnectionRequest, ConnectionRequestWithOpaqueRoutingToken, FailureCode,
    SecurityProtocol,
};
use ironrdp_pdu::x224::X224;

use crate::error::{proto, FilterError, Result};
use crate::wire::put_u32le;

/// Protocols the filter can inspect: TLS, and TLS with CredSSP (NLA). RDSTLS and RDS-AAD
/// carry their own authentication PDUs after TLS and are not supported; standard RDP
/// security (no flag) encrypts the stream with keys the filter does not have.
pub(crate) fn inspectable() -> SecurityProtocol {
    SecurityProtocol::SSL | SecurityProtocol::HYBRID | SecurityProtocol::HYBRID_EX
}

/// A parsed Connection Request.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) protocol: SecurityProtocol,
    /// Offset of the RDP_NEG_REQ structure in the frame, when present.
    neg_req_offset: Option<usize>,
}

/// Parses a complete TPKT frame holding a Connection Request.
pub(crate) fn parse_request(frame: &[u8]) -> Result<Request> {
    // Size of the routing token or cookie before the RDP_NEG_REQ, as ironrdp parsed it.
    let (protocol, nego_data_size) = match decode::<X224<ConnectionRequest>>(frame) {
        Ok(X224(req)) => (req.protocol, req.nego_data.as_ref().map_or(0, |d| d.size())),
        Err(first) => match decode::<X224<ConnectionRequestWithOpaqueRoutingToken>>(frame) {
            Ok(X224(req)) => (req.request.protocol, req.routing_token.size()),
            Err(_) => return Err(proto(format!("x.224 connection request: {first}"))),
        },
    };
    // TPKT (4) + LI (1) + code, dst-ref, src-ref, class (6) + variable part (LI - 6).
    let li = usize::from(frame[4]);
    if frame.len() != 5 + li || li < 6 {
        return Err(proto(
            "x.224 connection request: length indicator disagrees with tpkt",
        ));
    }
    let rest = (li - 6)
        .checked_sub(nego_data_size)
        .ok_or_else(|| proto("x.224 connection request: routing data overruns the header"))?;
    let neg_req_offset = if rest >= 8 {
        let off = 11 + nego_data_size;
        // RDP_NEG_REQ: type 0x01, flags, length 8, requestedProtocols.
        if frame.get(off) != Some(&0x01) || frame.get(off + 2..off + 4) != Some(&[8, 0][..]) {
            return Err(proto(
                "x.224 connection request: RDP_NEG_REQ not where parsed",
            ));
        }
        Some(off)
    } else {
        None
    };
    Ok(Request {
        protocol,
        neg_req_offset,
    })
}

impl Request {
    /// Rewrites requestedProtocols in `frame` (which `parse_request` accepted) to `protocol`.
    pub(crate) fn rewrite(&self, frame: &mut [u8], protocol: SecurityProtocol) {
        if let Some(off) = self.neg_req_offset {
            put_u32le(frame, off + 4, protocol.bits());
        }
    }
}

/// The server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// RDP_NEG_RSP (or no negotiation structure: standard RDP security).
    Selected(SecurityProtocol),
    /// RDP_NEG_FAILURE with its code.
    Failure(u32),
}

pub(crate) fn parse_confirm(frame: &[u8]) -> Result<Confirm> {
    match decode::<X224<ConnectionConfirm>>(frame) {
        Ok(X224(ConnectionConfirm::Response { protocol, .. })) => Ok(Confirm::Selected(protocol)),
        Ok(X224(ConnectionConfirm::Failure { code })) => Ok(Confirm::Failure(u32::from(code))),
        Err(e) => Err(proto(format!("x.224 connection confirm: {e}"))),
    }
}

/// The refusal for a session the filter cannot inspect, with a negative Connection Confirm
/// (SSL_REQUIRED_BY_SERVER) the agent can hand to the client.
pub(crate) fn refusal(detail: String) -> FilterError {
    let reply = encode_vec(&X224(ConnectionConfirm::Failure {
        code: FailureCode::SSL_REQUIRED_BY_SERVER,
    }))
    .ok();
    FilterError::Uninspectable {
        detail,
        reply_to_client: reply,
    }
}

#[cfg(test)]
mod tests {
    use ironrdp_pdu::nego::{CorrelationInfo, NegoRequestData, RequestFlags};

    use super::*;

    pub(crate) fn request(protocol: SecurityProtocol, correlation: bool) -> Vec<u8> {
        encode_vec(&X224(ConnectionRequest {
            nego_data: Some(NegoRequestData::cookie("alice".into())),
            flags: RequestFlags::empty(),
            protocol,
            correlation_info: correlation.then_some(CorrelationInfo {
                correlation_id: [7; 16],
            }),
        }))
        .unwrap()
    }

    #[test]
    fn request_is_parsed_and_rewritten_in_place() {
        for correlation in [false, true] {
            let all = SecurityProtocol::SSL
                | SecurityProtocol::HYBRID
                | SecurityProtocol::RDSTLS
                | SecurityProtocol::HYBRID_EX
                | SecurityProtocol::RDSAAD;
            let mut frame = request(all, correlation);
            let req = parse_request(&frame).unwrap();
            assert_eq!(req.protocol, all);
            req.rewrite(&mut frame, all & inspectable());
            let X224(again) = decode::<X224<ConnectionRequest>>(&frame).unwrap();
            assert_eq!(again.protocol, inspectable());
            assert_eq!(again.correlation_info.is_some(), correlation);
            assert!(
                matches!(again.nego_data, Some(NegoRequestData::Cookie(ref c)) if c.0 == "alice")
            );
        }
    }

    #[test]
    fn request_without_negotiation_is_standard_security() {
        let frame = encode_vec(&X224(ConnectionRequest {
            nego_data: Some(NegoRequestData::cookie("bob".into())),
            flags: RequestFlags::empty(),
            protocol: SecurityProtocol::empty(),
            correlation_info: None,
        }))
        .unwrap();
        let req = parse_request(&frame).unwrap();
        assert!(req.protocol.is_empty());
        // Hand-made: cookie only, no RDP_NEG_REQ.
        let mut raw = vec![0x03, 0, 0, 0, 0, 0xe0, 0, 0, 0, 0, 0];
        raw.extend_from_slice(b"Cookie: mstshash=bob\r\n");
        let len = raw.len();
        raw[3] = u8::try_from(len).unwrap();
        raw[4] = u8::try_from(len - 5).unwrap();
        let req = parse_request(&raw).unwrap();
        assert!(req.protocol.is_empty() && req.neg_req_offset.is_none());
    }

    #[test]
    fn confirm_and_refusal() {
        let cc = encode_vec(&X224(ConnectionConfirm::Response {
            flags: ironrdp_pdu::nego::ResponseFlags::empty(),
            protocol: SecurityProtocol::HYBRID,
        }))
        .unwrap();
        assert_eq!(
            parse_confirm(&cc).unwrap(),
            Confirm::Selected(SecurityProtocol::HYBRID)
        );
        let err = refusal("x".into());
        assert_eq!(err.reason_code(), "rdp_uninspectable");
        assert_eq!(
            parse_confirm(err.reply_to_client().unwrap()).unwrap(),
            Confirm::Failure(1)
        );
        assert!(parse_confirm(&[3, 0, 0, 7, 2, 0xf0, 0x80]).is_err());
    }
}
