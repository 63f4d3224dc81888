//! QUIC and TLS configuration binding each endpoint to its key-manager certificate.
