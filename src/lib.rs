pub mod proto {
    pub mod inference {
        include!(concat!(env!("OUT_DIR"), "/inference.rs"));
    }
    pub mod source {
        include!(concat!(env!("OUT_DIR"), "/percore.source.v1.rs"));
    }
}
