//! A connection's topics (subscribe, publish to the stripe of the topic and to peers) and the
//! per-connection limits it counts and logs.
use std::sync::Arc;

use actix_web_actors::ws;

use super::connection::ConnectionActor;
use crate::net::events::LimitExceeded;
use crate::protocol::{self, ServerMessage, TopicPub};
use crate::queue::actor::{TopicPublish, TopicSubscribe, TopicUnsubscribe};
use crate::telemetry::event::{ErrField, Event};

impl ConnectionActor {
    pub(super) fn on_topic_sub(&mut self, ctx: &mut ws::WebsocketContext<Self>, topic: String) {
        let Some(outbound) = self.outbound.clone() else {
            return;
        };
        if !protocol::is_valid_topic(&topic) {
            self.tel.count_invalid("malformed");
            return;
        }
        let max = self.node.config.max_topics_per_connection;
        if self.topics.len() >= max && !self.topics.contains(topic.as_str()) {
            let error = self.over_limit(
                "topics",
                max,
                format!(
                    "this connection is subscribed to {max} topics, the most one connection may \
                     (--max-topics-per-connection): TOPIC_UNSUB one first"
                ),
            );
            self.send(ctx, &ServerMessage::error(429, &error));
            return;
        }
        let topic: Arc<str> = Arc::from(topic);
        self.topics.insert(topic.clone());
        let stripe = &self.node.queue.stripes[self.node.queue.stripe_of_topic(&topic)];
        stripe.mailbox.do_send(TopicSubscribe {
            conn: self.id,
            topic,
            outbound,
        });
    }

    /// Counts and logs (at most once per interval) a request refused by `limit`: the error
    /// text for the client.
    pub(super) fn over_limit(&mut self, limit: &'static str, max: usize, error: String) -> String {
        self.tel.count_limit_exceeded(limit);
        self.log_limit(limit, max, &error);
        error
    }

    pub(super) fn log_limit(&mut self, limit: &'static str, max: usize, error: &str) {
        let suppressed = self.tel.limit_log.check(std::time::Instant::now());
        LimitExceeded {
            limit,
            max,
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::new("limit_exceeded", error),
        }
        .emit_if(&self.tel.log, suppressed.is_some());
    }

    pub(super) fn on_topic_unsub(&mut self, topic: String) {
        self.topics.remove(topic.as_str());
        let stripe = &self.node.queue.stripes[self.node.queue.stripe_of_topic(&topic)];
        stripe.mailbox.do_send(TopicUnsubscribe {
            conn: self.id,
            topic: Arc::from(topic),
        });
    }

    pub(super) fn on_topic_pub(&mut self, m: TopicPub) {
        if !protocol::is_valid_topic(&m.topic) {
            self.tel.count_invalid("malformed");
            return;
        }
        crate::cluster::replication::publish_to_peers(&self.node.cluster, &m.topic, &m.data);
        let stripe = &self.node.queue.stripes[self.node.queue.stripe_of_topic(&m.topic)];
        stripe.mailbox.do_send(TopicPublish {
            topic: Arc::from(m.topic),
            data: m.data,
            publisher: self.id,
        });
    }
}
