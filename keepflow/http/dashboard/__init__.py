"""The dashboard: sequences, their funnels, messages and customer timelines, at `/` of the admin
app (keepflow/http/admin.py), for people signed in; marketers see contact details masked."""
