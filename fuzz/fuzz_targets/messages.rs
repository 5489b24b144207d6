//! Every message type's `from_frame` on an arbitrary frame: byte 0 picks the
//! frame kind (every kind is reachable), the rest is the payload.
//!
//! A message that decodes must re-encode into a frame that decodes to the
//! same message. A decode error must make a refusal the gateway can still
//! send, as the gateway does (`Refusal::with_detail(error)`).
#![no_main]

use std::fmt::Debug;

use kakehashi_fuzz::kind_for;
use kakehashi_proto::frame::{self, Frame, MAX_PAYLOAD};
use kakehashi_proto::message::{
    AgentHello, AgentWelcome, DataChannelHello, FilterReport, LoginResult, Logout, Message,
    OpenDataChannel, RedeemLogin, SessionAccepted, SessionEndQuery, SessionEndReport,
    SessionRequest,
};
use kakehashi_proto::{Reason, Refusal};
use libfuzzer_sys::fuzz_target;

fn check<M: Message + PartialEq + Debug>(f: &Frame) {
    match M::from_frame(f) {
        Ok(m) => {
            assert_eq!(f.kind, M::KIND);
            let bytes = m.to_frame().expect("a decoded message re-encodes");
            let (g, used) = frame::decode(&bytes)
                .expect("our own frame decodes")
                .expect("our own frame is complete");
            assert_eq!(used, bytes.len());
            assert_eq!(M::from_frame(&g).expect("re-encoded message decodes"), m);
        }
        Err(e) => {
            // What the gateway does with a bad frame from a terminal.
            let r = Refusal::new(Reason::ProtocolError).with_detail(e.to_string());
            r.to_frame().expect("a refusal with any detail can be sent");
            let _ = r.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, payload)) = data.split_first() else {
        return;
    };
    let f = Frame {
        kind: kind_for(k),
        payload: payload[..payload.len().min(MAX_PAYLOAD)].to_vec(),
    };
    check::<SessionRequest>(&f);
    check::<SessionAccepted>(&f);
    check::<AgentHello>(&f);
    check::<AgentWelcome>(&f);
    check::<OpenDataChannel>(&f);
    check::<DataChannelHello>(&f);
    check::<FilterReport>(&f);
    check::<RedeemLogin>(&f);
    check::<LoginResult>(&f);
    check::<Logout>(&f);
    check::<SessionEndQuery>(&f);
    check::<SessionEndReport>(&f);
    check::<Refusal>(&f);
    // A refusal's detail may be any text (client and gateway pass error
    // chains into it).
    let text = String::from_utf8_lossy(payload);
    let r = Refusal::new(Reason::Internal).with_detail(text.as_ref());
    assert!(r
        .detail
        .as_ref()
        .is_some_and(|d| d.len() <= 512 && text.starts_with(d.as_str())));
    r.to_frame().expect("a refusal with any detail can be sent");
});
