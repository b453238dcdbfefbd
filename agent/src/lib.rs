//! The guest agent.
