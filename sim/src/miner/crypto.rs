//! md5crypt and AES-256-ECB for the Whatsminer v2 write API (being written).
