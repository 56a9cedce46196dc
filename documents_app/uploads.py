"""An upload handler that stops reading a body past the size limit."""

import os

from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

from .extract import MAX_FILE_BYTES


class SizeLimitedUploadHandler(TemporaryFileUploadHandler):
    """Counts bytes as they stream in and aborts the whole body past the limit."""

    # The temporary file is named after the upload's extension: one of hundreds of characters made a
    # name the file system refuses. No extension this long is one the library reads anyway.
    MAX_EXTENSION = 16

    def new_file(self, field_name, file_name, *args, **kwargs):
        self.received = 0
        self.too_large = False
        stem, extension = os.path.splitext(file_name)
        super().new_file(field_name, stem + extension[:self.MAX_EXTENSION], *args, **kwargs)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > MAX_FILE_BYTES:
            self.too_large = True
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)
