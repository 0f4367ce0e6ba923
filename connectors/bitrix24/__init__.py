"""Bitrix24: the REST client and the backup delivery (the vendor's cloud backup service).

CRM REST (step 2.11): :class:`~.rest.Bitrix24Client` (webhook auth, error mapping, leaky bucket,
bounded retries), :func:`~.lists.fast_list` (batch + ``>ID`` chaining), :func:`~.delta.export_delta`,
:func:`~.importer.import_delta`, :func:`~.reconcile.reconcile`, config :class:`~.configuration.CrmDeltaSection`.
Import the submodules directly; this package stays light.
"""
