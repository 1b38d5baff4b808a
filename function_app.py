"""The Azure Functions entry point: the HTTP API, queue workers and timers of Stowage."""

import azure.functions as func

from functions import queue_commands, timers
from functions.context import AppContext
from functions.http_api import create_api

context = AppContext.from_env()

app = func.AsgiFunctionApp(app=create_api(context), http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(queue_commands.blueprint(context))
app.register_functions(timers.blueprint(context))
