//! How a `ConnectionActor` runs its data requests: concurrently, their replies released in
//! request order ([`super::pipeline`]), then what each asks to happen once its frames are out.
//! The requests themselves: [`super::writes`], [`super::sync`], [`super::queries`],
//! [`super::topics`].
use std::sync::Arc;

use actix_web_actors::ws;

use super::connection::ConnectionActor;
use crate::queue::actor::SnapshotLoaded;
use crate::queue::subscriptions::SubKey;
use crate::shard::live::LiveQuery;

/// A finished request: the frames to send, then what to do once they are out.
pub struct Completion {
    pub(super) frames: Vec<Vec<u8>>,
    pub(super) after: Option<After>,
}

impl Completion {
    pub(super) fn frames(frames: Vec<Vec<u8>>) -> Self {
        Completion {
            frames,
            after: None,
        }
    }
}

/// Follow-ups that must happen after the reply was written.
// One per request, alive until its frames are out: boxing the big variant saves nothing.
#[allow(clippy::large_enum_variant)]
pub enum After {
    /// The QUERY_RESP is out: stripes may now route this subscription's live updates.
    SnapshotLoaded {
        key: SubKey,
        members: Vec<Vec<Arc<str>>>,
        seen: Arc<[u64]>,
        /// A `limit` query's window, seeded with what the QUERY_RESP sent.
        window: Option<LiveQuery>,
        /// A grouped query's rows as the QUERY_RESP sent them.
        groups: Option<super::grouped::LiveGroups>,
    },
    /// The snapshot could not be read (the QUERY_RESP carries the error): the subscription
    /// registered for it is dropped.
    SnapshotFailed { query_id: Arc<str> },
}

impl ConnectionActor {
    /// Runs `fut` off the actor; its result is released in request order by `finish`.
    pub(super) fn start_request(
        &mut self,
        fut: impl std::future::Future<Output = Completion> + 'static,
    ) {
        let seq = self.pipeline.open();
        let tx = self.completions.clone();
        actix_rt::spawn(async move {
            let done = fut.await;
            if let Some(tx) = tx {
                let _ = tx.send((seq, done));
            }
        });
    }

    /// Writes a due completion's frames, then runs its follow-up.
    pub(super) fn finish(&mut self, ctx: &mut ws::WebsocketContext<Self>, done: Completion) {
        for frame in done.frames {
            ctx.binary(frame);
        }
        match done.after {
            None => {}
            Some(After::SnapshotLoaded {
                key,
                members,
                seen,
                window,
                groups,
            }) => {
                match groups {
                    Some(g) => {
                        self.groups.insert(key.1.clone(), g);
                    }
                    None => {
                        self.groups.remove(&key.1);
                    }
                }
                match window {
                    Some(w) => {
                        self.windows.insert(key.1.clone(), w);
                    }
                    None => {
                        self.windows.remove(&key.1);
                    }
                }
                for (stripe, members) in self.node.queue.stripes.iter().zip(members) {
                    stripe.mailbox.do_send(SnapshotLoaded {
                        key: key.clone(),
                        members,
                        seen: seen.clone(),
                    });
                }
            }
            Some(After::SnapshotFailed { query_id }) => self.drop_subscription(query_id),
        }
    }
}
