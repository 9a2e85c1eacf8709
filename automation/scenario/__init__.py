"""Scenarios: a scripted timeline played against a throw-away store on a virtual clock
(``omniroute scenario run FILE``, docs/scenarios.md).

``model`` is the file's language, ``inbound`` turns a customer's step into what a channel
would have read, ``world`` reads the store back, ``expect`` checks a file's expectations
against it (pure), ``timeline`` formats what happened, ``runner`` plays the steps."""
