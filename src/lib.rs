pub use yukicomm_client;
