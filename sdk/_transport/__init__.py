"""The transport: the HTTP client of the server's API, its errors translated into the
SDK's, and the retry policy it waits by."""
