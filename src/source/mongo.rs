//! mongodump / mongorestore (in progress).
