"""An upload handler that stops reading a body past the size limit."""

from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

from .extract import MAX_FILE_BYTES


class SizeLimitedUploadHandler(TemporaryFileUploadHandler):
    """Counts bytes as they stream in and aborts the whole body past the limit."""

    def new_file(self, *args, **kwargs):
        self.received = 0
        self.too_large = False
        super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > MAX_FILE_BYTES:
            self.too_large = True
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)
